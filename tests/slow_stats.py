"""Slow, obviously correct references shared by the statistics and analyses tests (plain Python loops)."""

from __future__ import annotations

import math

import numpy as np


def precision(ranked: list, query, n_c: int, big_n: int) -> float:
    """Modified precision@N: hits among the first min(N, n_c) / min(N, n_c)."""
    n = min(big_n, n_c)
    return math.nan if n == 0 else sum(1 for x in ranked[:n] if x == query) / n


def plain_precision(ranked: list, query, n_c: int, big_n: int) -> float:
    return math.nan if n_c == 0 else sum(1 for x in ranked[:big_n] if x == query) / big_n


def hit(ranked: list, query, n_c: int, big_n: int) -> float:
    return math.nan if n_c == 0 else float(any(x == query for x in ranked[:big_n]))


def r_precision(ranked: list, query, n_c: int) -> float:
    r = min(n_c, len(ranked))
    return math.nan if r == 0 else sum(1 for x in ranked[:r] if x == query) / r


def map_at_r(ranked: list, query, n_c: int) -> float:
    r = min(n_c, len(ranked))
    if r == 0:
        return math.nan
    total, hits = 0.0, 0
    for j, x in enumerate(ranked[:r], start=1):
        if x == query:
            hits += 1
            total += hits / j
    return total / r


def average(values: list[list[float]], classes: list, kind: str) -> list[float]:
    """Micro: mean over the listed queries; macro: mean over classes of the class mean."""
    k = len(values[0])
    if kind == "micro":
        return [sum(v[j] for v in values) / len(values) for j in range(k)]
    by_class: dict = {}
    for v, c in zip(values, classes, strict=True):
        by_class.setdefault(c, []).append(v)
    return [
        sum(sum(v[j] for v in vs) / len(vs) for vs in by_class.values()) / len(by_class) for j in range(k)
    ]


def defined(per_query, cases) -> tuple[list[int], list]:
    """Rows without NaN, and their distinct cases in sorted order."""
    rows = [i for i in range(len(per_query)) if not any(math.isnan(x) for x in per_query[i])]
    return rows, sorted({cases[i] for i in rows})


def resamples(per_query, classes, cases, kind: str, n_boot: int, seed: int) -> np.ndarray:
    """Draw the cases one resample at a time; each drawn case brings all its queries; recompute from scratch."""
    rows, case_list = defined(per_query, cases)
    members = {c: [i for i in rows if cases[i] == c] for c in case_list}
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(case_list), len(case_list))
        queries = [i for d in drawn for i in members[case_list[d]]]
        stats.append(average([list(per_query[i]) for i in queries], [classes[i] for i in queries], kind))
    return np.array(stats)


def interval(per_query, classes, cases, kind: str, n_boot: int, seed: int) -> dict:
    """estimate, low, high (2.5 / 97.5 percentiles), n_cases, n_queries: lists over columns."""
    rows, case_list = defined(per_query, cases)
    stats = resamples(per_query, classes, cases, kind, n_boot, seed)
    return {
        "estimate": average([list(per_query[i]) for i in rows], [classes[i] for i in rows], kind),
        "low": np.percentile(stats, 2.5, axis=0),
        "high": np.percentile(stats, 97.5, axis=0),
        "n_cases": len(case_list),
        "n_queries": len(rows),
    }
