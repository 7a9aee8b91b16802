"""Cluster (case-level) bootstrap of micro and macro averages of per-query metrics, paired tests, Holm.

The case (a patient; the manifest's `patient_id`) is the independent unit: slices of one volume are not
independent queries. One resample draws the cases with replacement (`rng.integers(0, G, G)` over the G cases,
numbered in the sorted order of their ids, one draw per resample from `np.random.default_rng(seed)`); a case
drawn t times brings all its queries t times. On each resample, **micro** = mean over the resampled queries and
**macro** = mean over the classes present of the per-class means. Intervals are percentile intervals. With every
query its own case (`cases=None`) this is the ordinary bootstrap over queries.

Queries whose metric is undefined (NaN in any column: their class has no index image) are dropped first; the
case count reported is that of the remaining queries. Paired comparisons use the same draws for both models.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

AVERAGES = ("micro", "macro")
TIE = 1e-12  # resampled differences this close to 0 are ties


def case_codes(cases: Sequence | np.ndarray | pd.Series | None, n: int | None = None) -> np.ndarray:
    """Integer case code per row (0..G-1, in sorted order of the ids); a missing id (NaN, None, "") is its own case.

    `cases=None` (no `patient_id` column): every row its own case, `n` rows.
    """
    if cases is None:
        if n is None:
            raise ValueError("parameter 'n' is needed when 'cases' is None")
        return np.arange(n, dtype=np.int64)
    values = pd.Series(np.asarray(cases, dtype=object))
    if n is not None and len(values) != n:
        raise ValueError(f"parameter 'cases' has {len(values)} values; expected {n}")
    missing = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    present = np.asarray(values[~missing].tolist())  # numeric ids sort as numbers, text as text
    try:
        uniq, inverse = np.unique(present, return_inverse=True)
    except TypeError:  # mixed types: compare as text
        uniq, inverse = np.unique(present.astype(str), return_inverse=True)
    codes = np.empty(len(values), dtype=np.int64)
    codes[~missing] = inverse
    codes[missing] = len(uniq) + np.arange(
        int(missing.sum())
    )  # missing rows: one new case each, after the rest
    return codes


def _as_2d(per_query: np.ndarray) -> tuple[np.ndarray, bool]:
    p = np.asarray(per_query, dtype=np.float64)
    if p.ndim == 1:
        return p[:, None], True
    if p.ndim != 2:
        raise ValueError(f"parameter 'per_query' must be [Q] or [Q, K]; got shape {p.shape}")
    return p, False


def prepare(
    per_query: np.ndarray, query_labels: np.ndarray, cases
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values [Q', K], class codes [Q'], case codes 0..G-1 [Q']) of the queries with a defined metric."""
    p, _ = _as_2d(per_query)
    q = np.asarray(query_labels)
    if q.shape != (p.shape[0],):
        raise ValueError(
            f"parameters 'per_query' {p.shape} and 'query_labels' {q.shape} disagree on the number of queries"
        )
    g = case_codes(cases, p.shape[0])
    keep = ~np.isnan(p).any(axis=1)
    if not keep.any():
        raise ValueError("no query with a defined metric (every query's class is absent from the index)")
    _, q_codes = np.unique(q[keep], return_inverse=True)
    _, g_codes = np.unique(g[keep], return_inverse=True)
    return p[keep], q_codes.astype(np.int64), g_codes.astype(np.int64)


def _group_sums(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum of the rows of `values` [Q, K] per group code: [n_groups, K]."""
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=n_groups)
    out = np.zeros((n_groups, values.shape[1]))
    present = counts > 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[present]
    out[present] = np.add.reduceat(values[order], starts, axis=0)
    return out


def point_estimate(p: np.ndarray, q: np.ndarray, average: str) -> np.ndarray:
    """Micro or macro average [K] of defined per-query values `p` [Q, K] with class codes `q`."""
    if average == "micro":
        return p.mean(axis=0)
    n_classes = int(q.max()) + 1
    sums = _group_sums(p, q, n_classes)
    counts = np.bincount(q, minlength=n_classes)
    present = counts > 0
    return (sums[present] / counts[present, None]).mean(axis=0)


CACHED_DRAW_BYTES = 512 * 2**20  # draw counts up to this size (one byte per case and resample) are kept
NARROW_COUNT_MAX = 255  # the largest count the one-byte cache holds; beyond it, int64


def case_weights(n_cases: int, n_boot: int, seed: int, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first resample, times each case is drawn [b, G] float64); one `rng.integers(0, G, G)` per
    resample, in order. The counts of the last few (G, resamples, seed) are kept (`_draw_counts`): a report
    bootstraps many metrics over the same cases, and drawing 1,000 x 160,000 cases took seconds each time."""
    counts = _draw_counts(n_cases, n_boot, seed) if n_cases * n_boot <= CACHED_DRAW_BYTES else None
    draws = _draws(n_cases, n_boot, seed)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        if counts is not None:
            yield start, counts[start : start + b].astype(np.float64)
            continue
        w = np.empty((b, n_cases))
        for i in range(b):
            w[i] = next(draws)
        yield start, w


def _draws(n_cases: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Times each case is drawn [G], one resample after another: `rng.integers(0, G, G)` per resample."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.bincount(rng.integers(0, n_cases, n_cases), minlength=n_cases)


@functools.lru_cache(maxsize=2)
def _draw_counts(n_cases: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, G] `_draws`, one byte each (int64 if a count does not fit); read-only, since it is shared."""
    out = np.empty((n_boot, n_cases), dtype=np.uint8)
    wide = None
    for i, row in enumerate(_draws(n_cases, n_boot, seed)):
        if wide is None and row.max() > NARROW_COUNT_MAX:  # a case drawn 256+ times: possible, never seen
            wide = out.astype(np.int64)
        (out if wide is None else wide)[i] = row
    out = out if wide is None else wide
    out.flags.writeable = False
    return out


def resample_stats(
    p: np.ndarray, q: np.ndarray, g: np.ndarray, average: str = "micro", n_boot: int = 1000, seed: int = 0
) -> np.ndarray:
    """The statistic on each cluster-bootstrap resample: [n_boot, K].

    `p` [Q, K] defined values, `q` class codes, `g` case codes 0..G-1 (as returned by `prepare`). Columns are
    independent, so stacking two models side by side ([Q, 2K]) gives paired resamples.
    """
    if average not in AVERAGES:
        raise ValueError(f"parameter 'average' is {average!r}; allowed {list(AVERAGES)}")
    if n_boot < 1:
        raise ValueError(f"parameter 'n_boot' = {n_boot} must be >= 1")
    n_cases = int(g.max()) + 1
    k = p.shape[1]
    out = np.empty((n_boot, k))
    chunk = max(1, min(n_boot, 2**24 // n_cases))  # weights chunk <= 128 MiB
    if average == "micro":
        case_sum = _group_sums(p, g, n_cases)  # [G, K]
        case_n = np.bincount(g, minlength=n_cases).astype(np.float64)  # [G]
        for start, w in case_weights(n_cases, n_boot, seed, chunk):
            out[start : start + len(w)] = (w @ case_sum) / (w @ case_n)[:, None]
        return out
    # (class, case) pairs sorted by class, so each class is one contiguous block of columns
    pair, pair_idx = np.unique(q * n_cases + g, return_inverse=True)
    pair_sum = _group_sums(p, pair_idx, len(pair))  # [P, K]
    pair_n = np.bincount(pair_idx, minlength=len(pair)).astype(np.float64)
    pair_case, pair_class = pair % n_cases, pair // n_cases
    _, starts = np.unique(pair_class, return_index=True)
    ends = np.r_[starts[1:], len(pair)]
    chunk = max(1, min(n_boot, 2**24 // max(n_cases, len(pair))))
    for start, w in case_weights(n_cases, n_boot, seed, chunk):
        wp = w[:, pair_case]  # [b, P]: times each pair's case was drawn
        n_cls = np.add.reduceat(wp * pair_n, starts, axis=1)  # [b, classes]: resampled queries per class
        total = np.zeros((len(w), k))
        for j, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
            n = n_cls[:, j]
            ok = n > 0
            total += np.where(
                ok[:, None], (wp[:, lo:hi] @ pair_sum[lo:hi]) / np.where(ok, n, 1.0)[:, None], 0.0
            )
        out[start : start + len(w)] = total / (n_cls > 0).sum(axis=1)[:, None]
    return out


def percentile_interval(stats: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """The (1 - ci) / 2 and (1 + ci) / 2 percentiles of resampled statistics [B, K], per column."""
    if not 0 < ci < 1:
        raise ValueError(f"parameter 'ci' = {ci} must be in (0, 1)")
    low, high = np.percentile(stats, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return low, high


def _frame(columns: dict, k: int, one_d: bool) -> pd.DataFrame:
    df = pd.DataFrame(columns)
    if not one_d:
        df.insert(0, "N", np.arange(1, k + 1))
    return df


def bootstrap_ci(
    per_query: np.ndarray,
    query_labels: np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    *,
    average: str = "micro",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Cluster-bootstrap percentile CI of the micro or macro average of a per-query metric.

    `per_query` [Q, K] (e.g. P@N for N = 1..K) or [Q] (e.g. MAP@R); `cases` one case id per query (None: every
    query its own case). Returns DataFrame(N, estimate, low, high, n_cases, n_queries), without N for [Q] input.
    """
    _, one_d = _as_2d(per_query)
    p, q, g = prepare(per_query, query_labels, cases)
    stats = resample_stats(p, q, g, average, n_boot, seed)
    low, high = percentile_interval(stats, ci)
    return _frame(
        {
            "estimate": point_estimate(p, q, average),
            "low": low,
            "high": high,
            "n_cases": int(g.max()) + 1,
            "n_queries": len(q),
        },
        p.shape[1],
        one_d,
    )


def p_value(diffs: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value per column: min(1, 2 min((#{d* <= 0} + 1), (#{d* >= 0} + 1)) / (B + 1)).

    |d*| <= 1e-12 counts as 0 (a tie), so that rounding in the averages cannot turn a tie into a sign.
    """
    n_boot = diffs.shape[0]
    diffs = np.where(np.abs(diffs) <= TIE, 0.0, diffs)
    below = ((diffs <= 0).sum(axis=0) + 1) / (n_boot + 1)
    above = ((diffs >= 0).sum(axis=0) + 1) / (n_boot + 1)
    return np.minimum(1.0, 2 * np.minimum(below, above))


def p_floor(n_boot: int) -> float:
    """The smallest p `p_value` can give from `n_boot` resamples, 2 / (B + 1): a p there means "at most this"."""
    return 2.0 / (n_boot + 1)


def paired_bootstrap(
    per_query_a: np.ndarray,
    per_query_b: np.ndarray,
    query_labels: np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    *,
    average: str = "micro",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Paired cluster bootstrap of (model a - model b) on the same queries, the same case draws for both.

    Returns DataFrame(N, difference, low, high, p_value, p_min, n_cases, n_queries) (no N for [Q] input);
    `p_value` is the two-sided bootstrap p-value of `p_value()`, `p_min` its floor (`p_floor`). Queries undefined (NaN) in either model are dropped.
    """
    a, one_d = _as_2d(per_query_a)
    b, _ = _as_2d(per_query_b)
    if a.shape != b.shape:
        raise ValueError(f"parameters 'per_query_a' {a.shape} and 'per_query_b' {b.shape} differ in shape")
    both, q, g = prepare(np.hstack([a, b]), query_labels, cases)
    k = a.shape[1]
    stats = resample_stats(both, q, g, average, n_boot, seed)
    diffs = stats[:, :k] - stats[:, k:]
    point = point_estimate(both, q, average)
    low, high = percentile_interval(diffs, ci)
    return _frame(
        {
            "difference": point[:k] - point[k:],
            "low": low,
            "high": high,
            "p_value": p_value(diffs),
            "p_min": p_floor(n_boot),
            "n_cases": int(g.max()) + 1,
            "n_queries": len(q),
        },
        k,
        one_d,
    )


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN entries are left NaN and not counted among the tests).

    With the m p-values sorted ascending, p_(i) -> max over j <= i of min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
