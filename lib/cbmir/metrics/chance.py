"""Exact expected values of the retrieval metrics under a uniformly random ranking of the index.

A random ranking puts a uniformly random permutation of the M index images in the ranked list. For a query whose
class has n_c index images, the hit indicator X_j at rank j has E[X_j] = p = n_c / M and, for two ranks i != j,
E[X_i X_j] = r = n_c (n_c - 1) / (M (M - 1)). Hence (per query; NaN where n_c = 0, as for the metrics):

- modified P@N (n = min(N, n_c)): E = n p / n = **n_c / M for every N**; plain P@N: E = **n_c / M**;
  R-precision (R = min(n_c, K)): E = **n_c / M**.
- hit@N: 1 - P(no hit among N) = **1 - C(M - n_c, N) / C(M, N)** = 1 - prod_{i<N} (M - n_c - i) / (M - i).
- AP with precision taken at each hit among the first L ranks: E[X_j H_j / j] with H_j = hits among the first j
  is (p + (j - 1) r) / j, so E[sum_{j<=L} X_j H_j / j] = **L r + (p - r) h_L** with h_L = sum_{j<=L} 1/j.
  **MAP@R** = that with L = R, divided by R; **AP@N** (mAP@N) = that with L = N, divided by min(N, n_c).

Micro chance = the mean of these over the queries, macro = the mean over classes of the class means (the value
is the same for every query of a class). At a coarser label level, pass that level's class codes and counts.
The "finding among anatomy-correct neighbours" share has chance n_label / n_region (`conditional_chance`):
given that a of the first N random neighbours lie in the query's region, they are a uniformly random a-subset of
the region's index images.
"""

from __future__ import annotations

import numpy as np

from cbmir.metrics.retrieval import micro_macro

METRICS = ("precision", "plain_precision", "hit", "average_precision", "r_precision", "map_at_r")


def corrected(value: np.ndarray, expected_value: np.ndarray) -> np.ndarray:
    """Chance-corrected score (value - chance) / (1 - chance), elementwise, for a metric whose best value is 1:
    the share of the room above chance that was reached (1 = perfect, 0 = chance, below 0 = worse than chance),
    as in Cohen's kappa. NaN where chance is 1 (no room) or either input is NaN. Unlike the plain excess
    (value - chance), whose ceiling 1 - chance differs between label levels, it reaches 1 at every level."""
    value, expected_value = np.asarray(value, dtype=np.float64), np.asarray(expected_value, dtype=np.float64)
    room = 1.0 - expected_value
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(room > 0, (value - expected_value) / room, np.nan)


def _setup(query_labels: np.ndarray, index_class_counts: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    counts = np.asarray(index_class_counts, dtype=np.int64)
    q = np.asarray(query_labels)
    m = int(counts.sum())
    if q.ndim != 1:
        raise ValueError(f"parameter 'query_labels' must be one class code per query; got shape {q.shape}")
    if q.size and (q.min() < 0 or q.max() >= len(counts)):
        raise ValueError(f"parameter 'query_labels' has class ids outside 0..{len(counts) - 1}")
    if not 1 <= k <= m:
        raise ValueError(f"parameter 'k' = {k} must be between 1 and the index size M = {m}")
    return counts[q].astype(np.float64), m


def _undefined(n_c: np.ndarray, values: np.ndarray) -> np.ndarray:
    shape = (-1,) + (1,) * (values.ndim - 1)
    return np.where(n_c.reshape(shape) > 0, values, np.nan)


def expected_precision(query_labels: np.ndarray, index_class_counts: np.ndarray, k: int) -> np.ndarray:
    """Modified P@N, N = 1..k: n_c / M for every N; [Q, k]."""
    n_c, m = _setup(query_labels, index_class_counts, k)
    return _undefined(n_c, np.repeat((n_c / m)[:, None], k, axis=1))


def expected_plain_precision(query_labels: np.ndarray, index_class_counts: np.ndarray, k: int) -> np.ndarray:
    """Plain P@N, N = 1..k: n_c / M; [Q, k]."""
    return expected_precision(query_labels, index_class_counts, k)


def expected_hit(query_labels: np.ndarray, index_class_counts: np.ndarray, k: int) -> np.ndarray:
    """hit@N, N = 1..k: 1 - C(M - n_c, N) / C(M, N); [Q, k]."""
    n_c, m = _setup(query_labels, index_class_counts, k)
    i = np.arange(k)
    factors = np.clip((m - n_c[:, None] - i) / (m - i), 0.0, None)  # a zero factor: a hit is certain
    return _undefined(n_c, 1.0 - np.cumprod(factors, axis=1))


def _ap_sum(n_c: np.ndarray, m: int, length: np.ndarray) -> np.ndarray:
    """E[sum over ranks j <= L of X_j H_j / j] = L r + (p - r) h_L, elementwise over n_c and L."""
    p = n_c / m
    r = n_c * (n_c - 1) / (m * (m - 1)) if m > 1 else np.zeros_like(n_c)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(np.max(length, initial=0)) + 1))])
    return length * r + (p - r) * harmonic[length.astype(np.int64)]


def expected_average_precision(
    query_labels: np.ndarray, index_class_counts: np.ndarray, k: int
) -> np.ndarray:
    """AP@N (divided by min(N, n_c)), N = 1..k; [Q, k]."""
    n_c, m = _setup(query_labels, index_class_counts, k)
    big_n = np.arange(1, k + 1)[None, :].astype(np.float64)
    num = _ap_sum(n_c[:, None], m, np.broadcast_to(big_n, (len(n_c), k)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return _undefined(n_c, num / np.minimum(big_n, n_c[:, None]))


def expected_r_precision(query_labels: np.ndarray, index_class_counts: np.ndarray, k: int) -> np.ndarray:
    """R-precision, R = min(n_c, k): n_c / M; [Q]."""
    n_c, m = _setup(query_labels, index_class_counts, k)
    return _undefined(n_c, n_c / m)


def expected_map_at_r(query_labels: np.ndarray, index_class_counts: np.ndarray, k: int) -> np.ndarray:
    """MAP@R, R = min(n_c, k): (R r + (p - r) h_R) / R; [Q]."""
    n_c, m = _setup(query_labels, index_class_counts, k)
    r = np.minimum(n_c, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _undefined(n_c, _ap_sum(n_c, m, r) / r)


_EXPECTED = {
    "precision": expected_precision,
    "plain_precision": expected_plain_precision,
    "hit": expected_hit,
    "average_precision": expected_average_precision,
    "r_precision": expected_r_precision,
    "map_at_r": expected_map_at_r,
}


def expected(metric: str, query_labels: np.ndarray, index_class_counts: np.ndarray, k: int) -> np.ndarray:
    """Per-query expectation of `metric` (one of METRICS) under a random ranking: [Q, k] or [Q]."""
    if metric not in _EXPECTED:
        raise ValueError(f"parameter 'metric' is {metric!r}; allowed {list(METRICS)}")
    return _EXPECTED[metric](query_labels, index_class_counts, k)


def chance_micro_macro(
    metric: str, query_labels: np.ndarray, index_class_counts: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(micro, macro) chance of `metric`: [k] each for curves, or one-element arrays for R-based metrics."""
    values = expected(metric, query_labels, index_class_counts, k)
    return micro_macro(values if values.ndim == 2 else values[:, None], query_labels)


def conditional_chance(
    query_labels: np.ndarray, query_groups: np.ndarray, index_labels: np.ndarray, index_groups: np.ndarray
) -> np.ndarray:
    """Per query: index images with its label / index images of its group (e.g. region); NaN if the group is absent.

    The chance of "finding among anatomy-correct neighbours" with labels = full labels, groups = regions.
    """
    ql, qg = np.asarray(query_labels, dtype=object), np.asarray(query_groups, dtype=object)
    il, ig = np.asarray(index_labels, dtype=object), np.asarray(index_groups, dtype=object)
    if ql.shape != qg.shape or il.shape != ig.shape:
        raise ValueError(
            "parameters 'query_labels'/'query_groups' and 'index_labels'/'index_groups' must pair up"
        )
    label_count: dict = {}
    group_count: dict = {}
    for lab in il:
        label_count[lab] = label_count.get(lab, 0) + 1
    for grp in ig:
        group_count[grp] = group_count.get(grp, 0) + 1
    num = np.array([label_count.get(lab, 0) for lab in ql], dtype=np.float64)
    den = np.array([group_count.get(grp, 0) for grp in qg], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)
