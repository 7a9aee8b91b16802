"""Cluster bootstrap, paired bootstrap and Holm against slow, obviously correct references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import slow_stats as slow
from cbmir.metrics import bootstrap_ci, case_codes, holm, paired_bootstrap, precision_at_n

# ---------------------------------------------------------------- references (explicit loops)


def ref_average(values, classes, kind):
    return slow.average(values, classes, kind)


def ref_defined(per_query, q, cases):
    return slow.defined(per_query, [int(c) for c in cases])


def ref_resamples(per_query, q, cases, kind, n_boot, seed):
    return slow.resamples(per_query, [int(c) for c in q], [int(c) for c in cases], kind, n_boot, seed)


def random_problem(seed: int):
    rng = np.random.default_rng(seed)
    n_q, k = int(rng.integers(3, 40)), int(rng.choice([1, 3, 6]))
    q = rng.integers(0, int(rng.integers(1, 6)), n_q)
    cases = rng.integers(0, int(rng.integers(1, n_q + 1)), n_q) * 7 + 3  # arbitrary ids, some cases shared
    a = (rng.random((n_q, k)) < 0.6).astype(float)
    b = (rng.random((n_q, k)) < 0.5).astype(float)
    a[rng.random(n_q) < 0.1] = np.nan  # undefined queries
    a[0] = 1.0
    return a, b, q, cases


@pytest.mark.parametrize(("seed", "average"), [(s, a) for s in range(12) for a in ("micro", "macro")])
def test_cluster_bootstrap_matches_reference(seed, average):
    a, _, q, cases = random_problem(seed)
    stats = ref_resamples(a, q, cases, average, 60, seed)
    got = bootstrap_ci(a, q, cases, average=average, n_boot=60, seed=seed)
    rows, case_list = ref_defined(a, q, cases)
    want = ref_average([list(a[i]) for i in rows], [int(q[i]) for i in rows], average)
    np.testing.assert_allclose(got["estimate"], want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["low"], np.percentile(stats, 2.5, axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["high"], np.percentile(stats, 97.5, axis=0), rtol=0, atol=1e-12)
    assert (got["n_cases"] == len(case_list)).all() and (got["n_queries"] == len(rows)).all()
    assert got["N"].tolist() == list(range(1, a.shape[1] + 1))


@pytest.mark.parametrize(("seed", "average"), [(s, a) for s in range(12) for a in ("micro", "macro")])
def test_paired_cluster_bootstrap_matches_reference(seed, average):
    a, b, q, cases = random_problem(seed)
    b[np.isnan(a).any(axis=1)] = 0.0  # undefined in a only: must still be dropped from both
    both_nan = np.hstack([a, b])
    diff = ref_resamples(both_nan, q, cases, average, 80, seed)
    k = a.shape[1]
    diff = diff[:, :k] - diff[:, k:]
    got = paired_bootstrap(a, b, q, cases, average=average, n_boot=80, seed=seed)
    rows, case_list = ref_defined(a, q, cases)
    pa = ref_average([list(a[i]) for i in rows], [int(q[i]) for i in rows], average)
    pb = ref_average([list(b[i]) for i in rows], [int(q[i]) for i in rows], average)
    np.testing.assert_allclose(got["difference"], np.subtract(pa, pb), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["low"], np.percentile(diff, 2.5, axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["high"], np.percentile(diff, 97.5, axis=0), rtol=0, atol=1e-12)
    # a difference within 1e-12 of 0 is a tie (float rounding of equal averages)
    below = [(sum(1 for d in diff[:, j] if d <= 1e-12) + 1) / 81 for j in range(k)]
    above = [(sum(1 for d in diff[:, j] if d >= -1e-12) + 1) / 81 for j in range(k)]
    want_p = [min(1.0, 2 * min(lo, hi)) for lo, hi in zip(below, above, strict=True)]
    np.testing.assert_allclose(got["p_value"], want_p, rtol=0, atol=1e-12)
    assert (got["n_cases"] == len(case_list)).all()


def test_one_case_per_query_is_the_query_bootstrap_and_1d_input_has_no_n():
    rng = np.random.default_rng(5)
    q = rng.integers(0, 3, 30)
    nb = np.where(rng.random((30, 4)) < 0.5, q[:, None], rng.integers(0, 3, (30, 4)))
    p = precision_at_n(nb, q, np.array([9, 9, 9]))
    plain = bootstrap_ci(p, q, average="macro", n_boot=40, seed=2)
    distinct = bootstrap_ci(p, q, np.arange(30) * 3, average="macro", n_boot=40, seed=2)
    np.testing.assert_array_equal(plain.to_numpy(), distinct.to_numpy())
    assert (plain["n_cases"] == 30).all()
    one = bootstrap_ci(p[:, 0], q, average="micro", n_boot=40, seed=2)
    assert "N" not in one.columns and len(one) == 1
    np.testing.assert_allclose(one[["estimate", "low", "high"]].iloc[0], plain_first(p, q))


def plain_first(p, q):
    row = bootstrap_ci(p[:, :1], q, average="micro", n_boot=40, seed=2).iloc[0]
    return row[["estimate", "low", "high"]].to_numpy(dtype=float)


def test_clustered_queries_widen_the_interval():
    """Ten cases of 20 identical queries: the case bootstrap must be much wider than the query bootstrap."""
    rng = np.random.default_rng(0)
    case_value = (rng.random(10) < 0.5).astype(float)
    p = np.repeat(case_value, 20)[:, None]
    q = np.zeros(200, int)
    cases = np.repeat(np.arange(10), 20)
    by_case = bootstrap_ci(p, q, cases, n_boot=500, seed=1).iloc[0]
    by_query = bootstrap_ci(p, q, n_boot=500, seed=1).iloc[0]
    assert by_case["high"] - by_case["low"] > 2.5 * (by_query["high"] - by_query["low"])
    assert by_case["n_cases"] == 10 and by_query["n_cases"] == 200


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(3)
    q = rng.integers(0, 5, 400)
    cases = np.repeat(np.arange(100), 4)
    good = (rng.random((400, 3)) < 0.8).astype(float)
    bad = (rng.random((400, 3)) < 0.5).astype(float)
    res = paired_bootstrap(good, bad, q, cases, n_boot=200, seed=0)
    assert (res["p_value"] < 0.01).all() and (res["low"] > 0).all()
    same = paired_bootstrap(good, good, q, cases, n_boot=200, seed=0)
    assert (same["difference"] == 0).all() and (same["p_value"] == 1).all()


def test_case_codes():
    np.testing.assert_array_equal(case_codes(["b", "a", "b", "c"]), [1, 0, 1, 2])
    codes = case_codes(["p1", None, "p1", np.nan, ""])
    assert codes[0] == codes[2] and len(set(codes.tolist())) == 4  # each missing id its own case
    np.testing.assert_array_equal(case_codes(None, 3), [0, 1, 2])
    with pytest.raises(ValueError, match="'n'"):
        case_codes(None)
    with pytest.raises(ValueError, match="'cases' has 2 values"):
        bootstrap_ci(np.ones((3, 1)), np.zeros(3, int), ["a", "b"])


def ref_holm(p: list[float]) -> list[float]:
    idx = [i for i in range(len(p)) if not math.isnan(p[i])]
    order = sorted(idx, key=lambda i: p[i])
    m = len(order)
    out = [math.nan] * len(p)
    for rank, i in enumerate(order):
        out[i] = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
    return out


@pytest.mark.parametrize("seed", range(10))
def test_holm_matches_reference(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(int(rng.integers(1, 9))) ** 3
    p[rng.random(len(p)) < 0.2] = np.nan
    np.testing.assert_allclose(holm(p), ref_holm(p.tolist()), rtol=0, atol=1e-15, equal_nan=True)


def test_holm_hand_example():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan], equal_nan=True)


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_kept_draw_counts_give_the_same_intervals_as_fresh_draws(monkeypatch, average):
    """`case_weights` keeps the draw counts of recent (cases, resamples, seed) in one byte each; the intervals are
    those of draws made afresh (cache off), also when a count does not fit in a byte (the int64 fallback)."""
    from cbmir.metrics import bootstrap

    rng = np.random.default_rng(5)
    p, q, cases = rng.random((300, 4)), rng.integers(0, 5, 300), rng.integers(0, 40, 300)
    kept = bootstrap_ci(p, q, cases, average=average, n_boot=200, seed=3)
    monkeypatch.setattr(
        bootstrap, "NARROW_COUNT_MAX", 1
    )  # most draws hold a case twice: int64 from the start
    bootstrap._draw_counts.cache_clear()
    wide = bootstrap_ci(p, q, cases, average=average, n_boot=200, seed=3)
    assert bootstrap._draw_counts(40, 200, 3).dtype == np.int64
    monkeypatch.setattr(bootstrap, "CACHED_DRAW_BYTES", 0)
    fresh = bootstrap_ci(p, q, cases, average=average, n_boot=200, seed=3)
    monkeypatch.setattr(bootstrap, "NARROW_COUNT_MAX", 255)
    bootstrap._draw_counts.cache_clear()
    for other in (wide, fresh):
        np.testing.assert_array_equal(kept[["low", "high"]].to_numpy(), other[["low", "high"]].to_numpy())
    assert bootstrap._draw_counts(40, 200, 3).dtype == np.uint8
