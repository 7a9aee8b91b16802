"""cbmir.analyses.retrieval against slow per-query loops and the slow cluster bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import slow_stats as slow
from cbmir.analyses import retrieval

LABELS = [
    "CT/lung/lesion",
    "CT/lung/normal",
    "MR/brain/glioma",
    "MR/brain/normal",
    "XR/chest/pneumonia",
    "US/neck/x",
]


def problem(seed: int, n_rows: int = 160, k: int = 12):
    """Random labels, cases (some missing), sources, an index, queries and biased neighbour lists."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(LABELS[:-1], n_rows).astype(object)
    labels[rng.random(n_rows) < 0.03] = LABELS[-1]  # a rare class, maybe absent from the index
    split = rng.choice(["train", "test"], n_rows, p=[0.7, 0.3])
    cases = np.array([f"p{int(c):03d}" for c in rng.integers(0, 30, n_rows)], dtype=object)
    cases[rng.random(n_rows) < 0.1] = None
    source = rng.choice(["a", "b", "c"], n_rows)
    index_rows = np.flatnonzero(split == "train")
    query_rows = np.flatnonzero(split == "test")
    ids = []
    for qr in query_rows:
        same = [r for r in index_rows if labels[r] == labels[qr]]
        pool = same if same and rng.random() < 0.5 else list(index_rows)
        first = list(rng.choice(pool, size=min(3, len(pool)), replace=False))
        rest = [r for r in rng.permutation(index_rows) if r not in first]
        ids.append(first + rest[: k - len(first)])
    return np.array(ids), query_rows, index_rows, labels, cases, source


def ref_cases(cases, rows):
    """The case of each row as a sortable id; a missing one is its own case, sorted after the others."""
    return [cases[r] if cases[r] is not None else f"zz-missing-{r:05d}" for r in rows]


def ref_per_query(fn, ids, query_rows, index_rows, labels, big_ns=None):
    index_labels = [labels[r] for r in index_rows]
    out = []
    for qr, row in zip(query_rows, ids, strict=True):
        ranked = [labels[r] for r in row]
        n_c = index_labels.count(labels[qr])
        if big_ns is None:
            out.append([fn(ranked, labels[qr], n_c)])
        else:
            out.append([fn(ranked, labels[qr], n_c, n) for n in big_ns])
    return out


def ref_chance(query_rows, index_rows, labels):
    index_labels = [labels[r] for r in index_rows]
    return [index_labels.count(labels[q]) / len(index_rows) for q in query_rows]


@pytest.mark.parametrize("seed", range(3))
def test_precision_curves_match_reference(seed):
    ids, qr, ir, labels, cases, _ = problem(seed)
    got = retrieval.precision_curves(ids, qr, ir, labels, cases, n_boot=40, seed=seed)
    k = ids.shape[1]
    big_ns = range(1, k + 1)
    qlab = [labels[r] for r in qr]
    qcase = ref_cases(cases, qr)
    for kind in ("micro", "macro"):
        want = slow.interval(
            ref_per_query(slow.precision, ids, qr, ir, labels, big_ns), qlab, qcase, kind, 40, seed
        )
        np.testing.assert_allclose(got[kind], want["estimate"], atol=1e-12)
        np.testing.assert_allclose(got[f"{kind}_lo"], want["low"], atol=1e-12)
        np.testing.assert_allclose(got[f"{kind}_hi"], want["high"], atol=1e-12)
        assert (got["n_cases"] == want["n_cases"]).all() and (got["n_queries"] == want["n_queries"]).all()
    plain = slow.interval(
        ref_per_query(slow.plain_precision, ids, qr, ir, labels, big_ns), qlab, qcase, "micro", 40, seed
    )
    np.testing.assert_allclose(got["plain"], plain["estimate"], atol=1e-12)
    np.testing.assert_allclose(got["plain_lo"], plain["low"], atol=1e-12)
    rows, _ = slow.defined(ref_per_query(slow.precision, ids, qr, ir, labels, big_ns), qcase)
    chance = ref_chance(qr, ir, labels)
    np.testing.assert_allclose(got["chance_micro"], sum(chance[i] for i in rows) / len(rows), atol=1e-12)
    by_class: dict = {}
    for i in rows:
        by_class.setdefault(qlab[i], []).append(chance[i])
    np.testing.assert_allclose(
        got["chance_macro"], np.mean([np.mean(v) for v in by_class.values()]), atol=1e-12
    )
    m = len(ir)
    hits = ref_per_query(slow.hit, ids, qr, ir, labels, big_ns)
    np.testing.assert_allclose(got["hit_rate"], np.mean([hits[i] for i in rows], axis=0), atol=1e-12)
    hit_chance = [
        [1 - math.comb(m - round(chance[i] * m), n) / math.comb(m, n) for n in big_ns] for i in rows
    ]
    np.testing.assert_allclose(got["chance_hit"], np.mean(hit_chance, axis=0), atol=1e-12)
    assert got.attrs["n_excluded"] == len(qr) - len(rows)


@pytest.mark.parametrize(("seed", "middle"), [(0, None), (1, 4), (2, None)])
def test_curve_changes_match_a_slow_paired_bootstrap(seed, middle):
    """Each change is later-minus-earlier modified P@N of the same queries, resampled with the same case draws."""
    ids, qr, ir, labels, cases, _ = problem(seed)
    k = ids.shape[1]
    got = retrieval.curve_changes(ids, qr, ir, labels, cases, middle=middle, n_boot=40, seed=seed)
    mid = middle or k // 2 + 1
    pairs = [(1, mid), (mid, k), (1, k)]
    per_query = ref_per_query(
        slow.precision, ids, qr, ir, labels, [b for _, b in pairs] + [a for a, _ in pairs]
    )
    qlab, qcase = [labels[r] for r in qr], ref_cases(cases, qr)
    for kind in ("micro", "macro"):
        part = got[got["average"] == kind]
        assert list(zip(part["from_N"], part["to_N"], strict=True)) == pairs
        rows, case_list = slow.defined(per_query, qcase)
        est = slow.average([per_query[i] for i in rows], [qlab[i] for i in rows], kind)
        stats = slow.resamples(per_query, qlab, qcase, kind, 40, seed)
        diffs = stats[:, :3] - stats[:, 3:]
        np.testing.assert_allclose(part["difference"], np.subtract(est[:3], est[3:]), atol=1e-12)
        np.testing.assert_allclose(part["low"], np.percentile(diffs, 2.5, axis=0), atol=1e-12)
        np.testing.assert_allclose(part["high"], np.percentile(diffs, 97.5, axis=0), atol=1e-12)
        assert (part["n_cases"] == len(case_list)).all()
    # the same draws as the bands of precision_curves: its interval of P@1 is that of the earlier column
    curves = retrieval.precision_curves(ids, qr, ir, labels, cases, n_boot=40, seed=seed)
    one = slow.interval([[v[3]] for v in per_query], qlab, qcase, "micro", 40, seed)
    assert curves["micro_lo"].iloc[0] == pytest.approx(one["low"][0], abs=1e-12)


def test_curve_points_follow_the_shape_sentence():
    assert retrieval.curve_points(100) == (1, 51, 100)
    assert retrieval.curve_points(100, 10) == (1, 10, 100)
    assert retrieval.curve_points(2) == (1, 2) and retrieval.curve_points(1) == (1,)
    assert retrieval.curve_points(12, 12) == (1, 12)
    ids, qr, ir, labels, cases, _ = problem(0)
    assert retrieval.curve_changes(ids[:, :1], qr, ir, labels, cases, n_boot=10).empty


@pytest.mark.parametrize("seed", range(3))
def test_paper_table_matches_reference(seed):
    ids, qr, ir, labels, cases, _ = problem(seed)
    got = retrieval.paper_table(ids, qr, ir, labels, cases, n_boot=30, seed=1).set_index("metric")
    qlab, qcase = [labels[r] for r in qr], ref_cases(cases, qr)
    assert list(got.index) == [f"P@{n}" for n in (1, 3, 5, 10)] + [f"plain P@{n}" for n in (1, 3, 5, 10)] + [
        "R-precision",
        "MAP@R",
    ]
    checks = [
        ("P@{}", ref_per_query(slow.precision, ids, qr, ir, labels, (1, 3, 5, 10))),
        ("plain P@{}", ref_per_query(slow.plain_precision, ids, qr, ir, labels, (1, 3, 5, 10))),
        ("R-precision", ref_per_query(slow.r_precision, ids, qr, ir, labels)),
        ("MAP@R", ref_per_query(slow.map_at_r, ids, qr, ir, labels)),
    ]
    for name, values in checks:
        names = [name.format(n) for n in (1, 3, 5, 10)] if "{}" in name else [name]
        for kind in ("micro", "macro"):
            want = slow.interval(values, qlab, qcase, kind, 30, 1)
            np.testing.assert_allclose(got.loc[names, kind], want["estimate"], atol=1e-12)
            np.testing.assert_allclose(got.loc[names, f"{kind}_lo"], want["low"], atol=1e-12)
            np.testing.assert_allclose(got.loc[names, f"{kind}_hi"], want["high"], atol=1e-12)
        assert (got.loc[names, "n_cases"] == want["n_cases"]).all()
    # chance of R-precision = n_c / M; of MAP@R below it only by the (p - r) h_R / R correction
    np.testing.assert_allclose(got.loc["R-precision", "chance_micro"], got.loc["P@1", "chance_micro"])


@pytest.mark.parametrize("seed", range(2))
def test_breakdown_and_per_class_match_reference(seed):
    ids, qr, ir, labels, cases, source = problem(seed)
    got = retrieval.breakdown(ids, qr, ir, labels, source, cases, name="source", ns=(1, 5), n_boot=30, seed=2)
    per_query = ref_per_query(slow.precision, ids, qr, ir, labels, (1, 5))
    qlab, qcase = [labels[r] for r in qr], ref_cases(cases, qr)
    for g in ("a", "b", "c"):
        sel = [i for i, r in enumerate(qr) if source[r] == g]
        want = slow.interval(
            [per_query[i] for i in sel], [qlab[i] for i in sel], [qcase[i] for i in sel], "macro", 30, 2
        )
        part = got[got["source"] == g]
        np.testing.assert_allclose(part["macro"], want["estimate"], atol=1e-12)
        assert (part["n_cases"] == want["n_cases"]).all()
        if (part["n_cases"] < 2).all():  # one case: no interval is shown
            assert part["macro_lo"].isna().all()
            continue
        np.testing.assert_allclose(part["macro_lo"], want["low"], atol=1e-12)
    classes = retrieval.per_class(ids, qr, ir, labels, cases, ns=(1, 5), n_boot=30, seed=2).set_index("class")
    for lab in sorted(set(qlab)):
        sel = [i for i in range(len(qr)) if qlab[i] == lab]
        n_index = sum(1 for r in ir if labels[r] == lab)
        assert classes.loc[lab, "n_index"] == n_index and classes.loc[lab, "n_queries"] == len(sel)
        assert classes.loc[lab, "n_cases"] == len({qcase[i] for i in sel})
        if n_index == 0:
            assert np.isnan(classes.loc[lab, "P@1"])
            continue
        want = slow.interval(
            [per_query[i] for i in sel], [lab] * len(sel), [qcase[i] for i in sel], "micro", 30, 2
        )
        np.testing.assert_allclose(classes.loc[lab, ["P@1", "P@5"]], want["estimate"], atol=1e-12)
        if classes.loc[lab, "n_cases"] < 2:  # one case: no interval is shown
            assert classes.loc[lab, ["P@1_lo", "P@5_lo", "P@1_hi", "P@5_hi"]].isna().all()
            continue
        np.testing.assert_allclose(classes.loc[lab, ["P@1_lo", "P@5_lo"]], want["low"], atol=1e-12)
        np.testing.assert_allclose(classes.loc[lab, "chance"], n_index / len(ir))
    order = classes.reset_index()[["n_cases", "n_queries", "class"]]  # most evidence first
    assert order.equals(order.sort_values(["n_cases", "n_queries", "class"], ascending=[False, False, True]))


@pytest.mark.parametrize(("n_rows", "n"), [(25, 10), (20, 10), (11, 10), (7, 3), (1, 2), (0, 2)])
def test_best_worst_never_shows_a_class_twice(n_rows, n):
    rng = np.random.default_rng(n_rows)
    table = pd.DataFrame({"class": [f"c{i:02d}" for i in range(n_rows)], "P@1": rng.random(n_rows).round(1)})
    table.loc[table.index[:1], "P@1"] = np.nan  # a class absent from the index is never ranked
    best, worst = retrieval.best_worst(table, "P@1", n)
    ranked = table.dropna()
    assert not set(best["class"]) & set(worst["class"])
    assert len(best) + len(worst) == min(len(ranked), 2 * n)
    assert len(best) <= n and len(worst) <= n
    if len(best) and len(worst):
        assert best["P@1"].min() >= worst["P@1"].max()
    assert best["P@1"].is_monotonic_decreasing and worst["P@1"].is_monotonic_increasing
    with pytest.raises(ValueError, match="'value'"):
        retrieval.best_worst(table, "P@9")


def test_informative_columns_and_bad_input():
    table = pd.DataFrame({"source": ["a", "b", "a"], "dataset": ["x", "x", "x"]})
    assert retrieval.informative_columns(table, np.array([0, 1, 2])) == ["source"]
    assert retrieval.informative_columns(table, np.array([0, 2])) == []
    with pytest.raises(ValueError, match="'ids'"):
        retrieval.precision_curves(np.zeros((2, 3), int), np.array([0]), np.array([1]), ["a", "b"])
    with pytest.raises(ValueError, match="'index_rows'"):
        retrieval.precision_curves(np.zeros((1, 1), int), np.array([0]), np.array([5]), ["a", "b"])


def test_gallery_queries_show_every_class_once_before_repeating_one():
    rng = np.random.default_rng(3)
    labels = np.array([f"c{i}" for i in rng.integers(0, 5, 60)], dtype=object)
    query_rows = np.sort(rng.choice(60, 30, replace=False))
    present = set(labels[query_rows])
    for n in (3, len(present), 12, 100):
        shown = retrieval.gallery_queries(query_rows, labels, n=n, seed=1)
        assert len(shown) == min(n, len(query_rows)) and len(set(shown)) == len(shown)
        first = [labels[query_rows[p]] for p in shown[: len(present)]]
        assert len(set(first)) == len(first)  # no class twice before every class was shown
    assert retrieval.gallery_queries(query_rows, labels, 8, seed=1) == retrieval.gallery_queries(
        query_rows, labels, 8, seed=1
    )


def test_single_case_rows_have_no_interval():
    """A class or group whose queries all come from one case keeps its estimate but shows no interval."""
    table = pd.DataFrame(
        {
            "class": ["a", "b"],
            "n_cases": [1, 3],
            "P@1": [0.5, 0.4],
            "P@1_lo": [0.5, 0.1],
            "P@1_hi": [0.5, 0.7],
        }
    )
    out = retrieval.without_single_case_intervals(table.copy())
    assert out.loc[0, ["P@1_lo", "P@1_hi"]].isna().all() and out.loc[0, "P@1"] == 0.5
    pd.testing.assert_series_equal(out.loc[1], table.loc[1])


def test_best_worst_ranks_only_classes_with_enough_cases_and_ties_by_cases():
    table = pd.DataFrame({"class": ["a", "b", "c", "d", "e", "f"], "P@1": [1.0, 1.0, 0.5, 0.0, 0.0, 0.2],
                          "n_cases": [1, 6, 5, 1, 7, 9]})  # fmt: skip
    best, worst = retrieval.best_worst(table, "P@1", n=2)
    assert best["class"].tolist() == ["b", "a"] and worst["class"].tolist() == [
        "e",
        "d",
    ]  # ties: more cases first
    best, worst = retrieval.best_worst(table, "P@1", n=2, min_cases=5)
    assert best["class"].tolist() == ["b", "c"] and worst["class"].tolist() == ["e", "f"]
    with pytest.raises(ValueError, match="'min_cases' = 0"):
        retrieval.best_worst(table, "P@1", min_cases=0)
    with pytest.raises(ValueError, match="needs an 'n_cases' column"):
        retrieval.best_worst(table.drop(columns="n_cases"), "P@1", min_cases=2)
