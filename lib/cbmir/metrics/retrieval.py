"""Retrieval metrics over the neighbour-label matrix (vectorised NumPy).

Definitions. For a query of class c with n_c images of class c in the search index and the first N of its
K ranked neighbours:

- **modified precision@N** (the paper's): n = min(N, n_c); P@N = (hits among the first n neighbours) / n.
- **plain precision@N**: hits among the first N / N (its denominator never depends on the index).
- **AP@N** (average precision): sum over ranks j <= N of [hit at j] * (hits among the first j) / j, divided by
  min(N, n_c), the most hits possible, so a perfect ranking scores 1. **mAP@N** = mean AP@N.
- **hit rate@N**: 1 if any of the first N neighbours has the query's class.
- **R-precision** (Musgrave et al. 2020, "A Metric Learning Reality Check"): R = min(n_c, K); hits among the
  first R / R (it equals modified P@K).
- **MAP@R** (same paper): with R = min(n_c, K), sum over ranks j <= R of [hit at j] * (hits among the first j)
  / j, divided by R.
- **micro** = mean over queries; **macro** = mean over the classes present among the queries of the per-class
  mean.

Queries whose class has no image in the index (n_c = 0) have no defined precision: every per-query metric is NaN
for them, they are excluded from all averages (hit rate included, so every metric uses the same queries), and
`retrieval_metrics` reports how many were excluded (`attrs["n_excluded"]`). Confidence intervals:
`cbmir.metrics.bootstrap`; expected values under a random ranking: `cbmir.metrics.chance`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


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


def plain_precision_at_n(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, index_class_counts: np.ndarray
) -> np.ndarray:
    """Plain precision@N = hits among the first N / N, N = 1..K: [Q, K] float64, NaN rows where n_c = 0."""
    nb, q = _check(neighbour_labels, query_labels)
    hits = np.cumsum(nb == q[:, None], axis=1)
    n = _n_used(q, index_class_counts, nb.shape[1])
    return np.where(n > 0, hits / np.arange(1, nb.shape[1] + 1), np.nan)


def _r(query_labels: np.ndarray, index_class_counts: np.ndarray, k: int) -> np.ndarray:
    """R = min(n_c, K) per query [Q] (0 where n_c = 0)."""
    return _n_used(query_labels, index_class_counts, k)[:, -1]


def r_precision(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, index_class_counts: np.ndarray
) -> np.ndarray:
    """R-precision with R = min(n_c, K): hits among the first R / R, [Q] float64, NaN where n_c = 0."""
    nb, q = _check(neighbour_labels, query_labels)
    r = _r(q, index_class_counts, nb.shape[1])
    hits = np.cumsum(nb == q[:, None], axis=1)
    got = np.take_along_axis(hits, np.maximum(r - 1, 0)[:, None], axis=1)[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(r > 0, got / r, np.nan)


def map_at_r(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, index_class_counts: np.ndarray
) -> np.ndarray:
    """MAP@R with R = min(n_c, K): precision at each hit among the first R ranks, summed, / R; [Q], NaN where n_c = 0."""
    nb, q = _check(neighbour_labels, query_labels)
    k = nb.shape[1]
    r = _r(q, index_class_counts, k)
    rel = nb == q[:, None]
    hits = np.cumsum(rel, axis=1)
    within = np.arange(1, k + 1)[None, :] <= r[:, None]
    terms = np.where(rel & within, hits / np.arange(1, k + 1), 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(r > 0, terms / r, np.nan)


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
