"""Chance values against brute-force averages over every ranking of tiny indexes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from cbmir.metrics import (
    average_precision_at_n,
    chance_micro_macro,
    conditional_chance,
    expected,
    hit_at_n,
    map_at_r,
    plain_precision_at_n,
    precision_at_n,
    r_precision,
)
from cbmir.metrics.chance import METRICS

FAST = {
    "precision": precision_at_n,
    "plain_precision": plain_precision_at_n,
    "hit": hit_at_n,
    "average_precision": average_precision_at_n,
    "r_precision": r_precision,
    "map_at_r": map_at_r,
}


def brute_force(metric: str, index: list[int], query: int, k: int) -> np.ndarray:
    """Average the metric over all M! orderings of the index (each equally likely)."""
    counts = np.bincount(index, minlength=max(index + [query]) + 1)
    total = None
    n = 0
    for perm in itertools.permutations(range(len(index))):
        ranked = np.array([[index[i] for i in perm[:k]]])
        value = FAST[metric](ranked, np.array([query]), counts)[0]
        total = value if total is None else total + value
        n += 1
    return total / n


TINY = [([0, 0, 1, 1, 1, 2], 6), ([0, 1, 1, 1, 1, 1, 2], 4), ([0, 0, 0, 1], 2), ([3, 0, 3, 3, 1, 2], 5)]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(("index", "k"), TINY)
def test_chance_equals_the_average_over_all_rankings(metric, index, k):
    counts = np.bincount(index)
    for query in sorted(set(index)):
        got = expected(metric, np.array([query]), counts, k)[0]
        np.testing.assert_allclose(got, brute_force(metric, index, query, k), rtol=0, atol=1e-12)


def test_chance_of_an_absent_class_is_undefined_and_k_is_checked():
    counts = np.array([3, 0])
    for metric in METRICS:
        assert np.isnan(expected(metric, np.array([1]), counts, 2)).all()
    with pytest.raises(ValueError, match="'k' = 4"):
        expected("hit", np.array([0]), counts, 4)
    with pytest.raises(ValueError, match="'metric'"):
        expected("ndcg", np.array([0]), counts, 1)


def test_closed_forms():
    counts = np.array([5, 15])  # M = 20
    np.testing.assert_allclose(expected("precision", np.array([0]), counts, 10)[0], 0.25)
    hit = expected("hit", np.array([0]), counts, 3)[0]
    want = [1 - math.comb(15, n) / math.comb(20, n) for n in (1, 2, 3)]
    np.testing.assert_allclose(hit, want, rtol=0, atol=1e-14)


def test_large_index_monte_carlo():
    """An index too large to enumerate: 20,000 random rankings agree with the exact MAP@R and hit@N to 4 SE."""
    rng = np.random.default_rng(0)
    index = np.repeat([0, 1, 2], [30, 50, 120])
    counts = np.bincount(index)
    k = 40
    ranked = np.stack([rng.permutation(index)[:k] for _ in range(20000)])
    q = np.zeros(len(ranked), int)
    for metric in ("map_at_r", "hit", "average_precision"):
        sim = FAST[metric](ranked, q, counts)
        sim = sim if sim.ndim == 2 else sim[:, None]
        exact = expected(metric, np.array([0]), counts, k)[0]
        se = sim.std(axis=0) / np.sqrt(len(sim)) + 1e-12
        assert (np.abs(sim.mean(axis=0) - exact) <= 4 * se + 1e-9).all(), metric


def test_micro_macro_chance():
    counts = np.array([2, 6, 2])  # M = 10
    q = np.array([0, 1, 1, 1, 2])
    micro, macro = chance_micro_macro("precision", q, counts, 3)
    np.testing.assert_allclose(micro, (0.2 + 3 * 0.6 + 0.2) / 5)
    np.testing.assert_allclose(macro, (0.2 + 0.6 + 0.2) / 3)
    micro, _ = chance_micro_macro("map_at_r", q, counts, 3)
    assert micro.shape == (1,)


def test_conditional_chance_by_enumeration():
    """Share of label hits among region hits in the first N, averaged over rankings with a region hit."""
    regions = ["a", "a", "a", "b", "b", "a"]
    labels = ["a/x", "a/y", "a/x", "b/z", "b/w", "a/x"]
    for q_label, q_region in (("a/x", "a"), ("a/y", "a"), ("b/z", "b")):
        want = conditional_chance([q_label], [q_region], labels, regions)[0]
        for n in (1, 2, 4):
            shares = []
            for perm in itertools.permutations(range(6)):
                top = perm[:n]
                anat = [i for i in top if regions[i] == q_region]
                if anat:
                    shares.append(sum(labels[i] == q_label for i in anat) / len(anat))
            assert math.isclose(sum(shares) / len(shares), want, abs_tol=1e-12)
    assert np.isnan(conditional_chance(["c/v"], ["c"], labels, regions)[0])
