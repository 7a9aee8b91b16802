"""Retrieval metrics over the neighbour-label matrix (vectorised NumPy).

Definitions (DESIGN.md §1). For a query of class c with n_c images of class c in the search index and the
first N neighbours of the ranked list:

- **modified precision@N**: n = min(N, n_c); P@N = (hits among the first n neighbours) / n.
- **AP@N** (average precision): sum over ranks j <= N of [hit at j] * (hits among the first j) / j, divided by
  min(N, n_c), the most hits possible, so a perfect ranking scores 1. **mAP@N** = mean AP@N.
- **hit rate@N**: 1 if any of the first N neighbours has the query's class.
- **micro** = mean over queries; **macro** = mean over the classes present among the queries of the per-class
  mean.

Queries whose class has no image in the index (n_c = 0) have no defined precision: every per-query metric is NaN
for them, they are excluded from all averages (hit rate included, so every metric uses the same queries), and
`retrieval_metrics` reports how many were excluded (`attrs["n_excluded"]`).

Bootstrap: queries are resampled with replacement (one `rng.integers(0, Q, Q)` draw per resample from
`np.random.default_rng(seed)`, over the valid queries); micro and macro are recomputed on each resample (for
macro, per-class means within the resample, over the classes drawn). CIs are percentile intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

AVERAGES = ("micro", "macro")


def _check(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nb = np.asarray(neighbour_labels)
    q = np.asarray(query_labels)
    if nb.ndim != 2 or nb.shape[1] == 0:
        raise ValueError(f"parameter 'neighbour_labels' must be [Q, K] with K >= 1; got shape {nb.shape}")
    if q.shape != (nb.shape[0],):
        raise ValueError(f"parameter 'query_labels' must have shape ({nb.shape[0]},); got {q.shape}")
    return nb, q


def _n_used(query_labels: np.ndarray, index_class_counts: np.ndarray, k: int) -> np.ndarray:
    """n = min(N, n_c) for N = 1..k, as [Q, K] int64 (0 where n_c = 0)."""
    counts = np.asarray(index_class_counts, dtype=np.int64)
    if query_labels.size and (query_labels.min() < 0 or query_labels.max() >= len(counts)):
        raise ValueError(
            f"parameter 'query_labels' has class ids outside 0..{len(counts) - 1} of 'index_class_counts'"
        )
    n_c = counts[query_labels]
    return np.minimum(np.arange(1, k + 1)[None, :], n_c[:, None])


def precision_at_n(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, index_class_counts: np.ndarray
) -> np.ndarray:
    """Modified precision@N for N = 1..K: [Q, K] float64, NaN rows for queries with n_c = 0."""
    nb, q = _check(neighbour_labels, query_labels)
    hits = np.cumsum(nb == q[:, None], axis=1)
    n = _n_used(q, index_class_counts, nb.shape[1])
    got = np.take_along_axis(hits, np.maximum(n - 1, 0), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, got / n, np.nan)


def average_precision_at_n(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, index_class_counts: np.ndarray
) -> np.ndarray:
    """AP@N for N = 1..K: [Q, K] float64, NaN rows for queries with n_c = 0."""
    nb, q = _check(neighbour_labels, query_labels)
    rel = nb == q[:, None]
    hits = np.cumsum(rel, axis=1)
    terms = np.cumsum(np.where(rel, hits / np.arange(1, nb.shape[1] + 1), 0.0), axis=1)
    n = _n_used(q, index_class_counts, nb.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, terms / n, np.nan)


def hit_at_n(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, index_class_counts: np.ndarray
) -> np.ndarray:
    """1.0 if a hit is among the first N neighbours, N = 1..K: [Q, K] float64, NaN rows where n_c = 0."""
    nb, q = _check(neighbour_labels, query_labels)
    hit = np.logical_or.accumulate(nb == q[:, None], axis=1).astype(np.float64)
    n = _n_used(q, index_class_counts, nb.shape[1])
    return np.where(n > 0, hit, np.nan)


def _valid(per_query: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    per_query = np.asarray(per_query, dtype=np.float64)
    query_labels = np.asarray(query_labels)
    if per_query.ndim != 2 or query_labels.shape != (per_query.shape[0],):
        raise ValueError(
            f"parameters 'per_query' [Q, K] and 'query_labels' [Q] disagree: {per_query.shape}, {query_labels.shape}"
        )
    keep = ~np.isnan(per_query).any(axis=1)
    if not keep.any():
        raise ValueError("no query with a defined metric (every query's class is absent from the index)")
    return per_query[keep], query_labels[keep]


def micro_macro(per_query: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(micro [K], macro [K]) over the queries whose metric is defined (NaN rows dropped)."""
    p, q = _valid(per_query, query_labels)
    micro = p.mean(axis=0)
    classes, inverse, counts = np.unique(q, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    class_means = np.add.reduceat(p[order], starts, axis=0) / counts[:, None]
    return micro, class_means.mean(axis=0)


def encode_labels(row_labels: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class names sorted, int64 code per row) for string labels."""
    classes, codes = np.unique(np.asarray(row_labels, dtype=object).astype(str), return_inverse=True)
    return classes, codes.astype(np.int64)


def _index_rows(neighbours, index_rows: np.ndarray | None) -> np.ndarray:
    if index_rows is None:
        index_rows = getattr(neighbours, "index_rows", None)
    if index_rows is None:
        raise ValueError(
            "parameter 'index_rows' is needed (the neighbour table does not record its index rows)"
        )
    return np.asarray(index_rows, dtype=np.int64)


def label_matrices(
    neighbours, row_labels: Sequence[str] | np.ndarray, index_rows: np.ndarray | None = None, max_n: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(neighbour_labels [Q, max_n], query_labels [Q], index_class_counts [C], class names [C])."""
    classes, codes = encode_labels(row_labels)
    if max_n < 1 or max_n > neighbours.ids.shape[1]:
        raise ValueError(f"parameter 'max_n' = {max_n} must be between 1 and K = {neighbours.ids.shape[1]}")
    counts = np.bincount(codes[_index_rows(neighbours, index_rows)], minlength=len(classes))
    return codes[neighbours.ids[:, :max_n]], codes[neighbours.query_rows], counts, classes


def retrieval_metrics(
    neighbours, row_labels: Sequence[str] | np.ndarray, index_rows: np.ndarray | None = None, max_n: int = 100
) -> pd.DataFrame:
    """Per N = 1..max_n: micro and macro modified precision, mAP and hit rate (micro over queries).

    `row_labels` holds one label per manifest row; `index_rows` defaults to `neighbours.index_rows`.
    `attrs`: n_queries (used), n_excluded (queries whose class has no index image).
    """
    nb, q, counts, _ = label_matrices(neighbours, row_labels, index_rows, max_n)
    prec = precision_at_n(nb, q, counts)
    micro, macro = micro_macro(prec, q)
    ap, _ = micro_macro(average_precision_at_n(nb, q, counts), q)
    hit, _ = micro_macro(hit_at_n(nb, q, counts), q)
    out = pd.DataFrame(
        {"N": np.arange(1, max_n + 1), "micro": micro, "macro": macro, "map": ap, "hit_rate": hit}
    )
    excluded = int(np.isnan(prec[:, 0]).sum())
    out.attrs.update(n_queries=len(q) - excluded, n_excluded=excluded)
    return out


def retrieval_metrics_by_level(
    neighbours, manifest: pd.DataFrame, index_rows: np.ndarray | None = None, max_n: int = 100
) -> pd.DataFrame:
    """`retrieval_metrics` at each label level (modality, region, label), stacked with a `level` column."""
    from cbmir.manifest import LEVELS, row_labels, split_rows

    if index_rows is None and getattr(neighbours, "index_rows", None) is None:
        index_rows = split_rows(manifest, "train")
    frames = []
    for level in LEVELS:
        df = retrieval_metrics(neighbours, row_labels(manifest, level), index_rows, max_n)
        frames.append(
            df.assign(level=level, n_queries=df.attrs["n_queries"], n_excluded=df.attrs["n_excluded"])
        )
    return pd.concat(frames, ignore_index=True)[
        ["level", "N", "micro", "macro", "map", "hit_rate", "n_queries", "n_excluded"]
    ]


def per_class_precision(
    neighbours,
    row_labels: Sequence[str] | np.ndarray,
    index_rows: np.ndarray | None = None,
    ns: Sequence[int] = (1, 3, 5, 10),
) -> pd.DataFrame:
    """One row per class present among the queries: n_queries, n_index, mean P@N for each N in `ns`.

    Classes absent from the index have n_index = 0 and NaN precision.
    """
    nb, q, counts, classes = label_matrices(neighbours, row_labels, index_rows, max(ns))
    prec = precision_at_n(nb, q, counts)
    present, n_queries = np.unique(q, return_counts=True)
    out = pd.DataFrame({"class": classes[present], "n_queries": n_queries, "n_index": counts[present]})
    for n in ns:
        sums = np.bincount(q, weights=prec[:, n - 1], minlength=len(classes))[present]
        out[f"P@{n}"] = sums / n_queries  # NaN for classes absent from the index
    return out


def _bootstrap_stats(p: np.ndarray, q: np.ndarray, average: str, n_boot: int, seed: int) -> np.ndarray:
    """Statistic of each resample: [n_boot, K]."""
    if average not in AVERAGES:
        raise ValueError(f"parameter 'average' is {average!r}; allowed {list(AVERAGES)}")
    if n_boot < 1:
        raise ValueError(f"parameter 'n_boot' = {n_boot} must be >= 1")
    out = np.empty((n_boot, p.shape[1]))
    classes = np.unique(q)
    members = [np.flatnonzero(q == c) for c in classes]
    chunk = max(1, min(n_boot, 2**24 // max(1, len(q))))  # weights chunk <= 128 MiB
    for start, w in _chunked_weights(len(q), n_boot, seed, chunk):
        if average == "micro":
            out[start : start + len(w)] = w @ p / len(q)
        else:
            sums = np.stack([w[:, m] @ p[m] for m in members], axis=1)  # [b, C, K]
            n = np.stack([w[:, m].sum(axis=1) for m in members], axis=1)  # [b, C]
            with np.errstate(invalid="ignore", divide="ignore"):
                means = sums / n[:, :, None]
            out[start : start + len(w)] = np.nanmean(means, axis=1)
    return out


def _chunked_weights(n: int, n_boot: int, seed: int, chunk: int):
    """Yield (first resample, weights [b, n]) one `rng.integers(0, n, n)` draw per resample, in order."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        yield (
            start,
            np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(b)]).astype(np.float64),
        )


def _point(p: np.ndarray, q: np.ndarray, average: str) -> np.ndarray:
    micro, macro = micro_macro(p, q)
    return micro if average == "micro" else macro


def bootstrap_ci(
    per_query: np.ndarray,
    query_labels: np.ndarray,
    *,
    average: str = "micro",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Percentile bootstrap CI over queries for a per-query metric [Q, K]: DataFrame(N, estimate, low, high)."""
    p, q = _valid(per_query, query_labels)
    stats = _bootstrap_stats(p, q, average, n_boot, seed)
    low, high = np.percentile(stats, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    n = np.arange(1, p.shape[1] + 1)
    return pd.DataFrame({"N": n, "estimate": _point(p, q, average), "low": low, "high": high})


def paired_bootstrap(
    per_query_a: np.ndarray,
    per_query_b: np.ndarray,
    query_labels: np.ndarray,
    *,
    average: str = "micro",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Paired bootstrap of (model a - model b) on the same queries, same resampled indices for both.

    Returns DataFrame(N, difference, low, high, p_value). The two-sided p-value is
    min(1, 2 min((#{d* <= 0} + 1) / (B + 1), (#{d* >= 0} + 1) / (B + 1))) over the B resampled differences d*.
    Queries undefined (NaN) in either model are dropped.
    """
    a = np.asarray(per_query_a, dtype=np.float64)
    b = np.asarray(per_query_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"parameters 'per_query_a' {a.shape} and 'per_query_b' {b.shape} differ in shape")
    both, q = _valid(np.hstack([a, b]), query_labels)
    k = a.shape[1]
    stats = _bootstrap_stats(both, q, average, n_boot, seed)
    diffs = stats[:, :k] - stats[:, k:]
    point = _point(both, q, average)
    low, high = np.percentile(diffs, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    below = ((diffs <= 0).sum(axis=0) + 1) / (n_boot + 1)
    above = ((diffs >= 0).sum(axis=0) + 1) / (n_boot + 1)
    p_value = np.minimum(1.0, 2 * np.minimum(below, above))
    return pd.DataFrame(
        {
            "N": np.arange(1, k + 1),
            "difference": point[:k] - point[k:],
            "low": low,
            "high": high,
            "p_value": p_value,
        }
    )
