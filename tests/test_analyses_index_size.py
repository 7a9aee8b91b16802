"""cbmir.analyses.index_size: case-level stratified subsamples, and the study against slow loops."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import slow_stats as slow
from cbmir.analyses import index_size

LABELS = ["a/x/1", "a/x/2", "b/y/1", "c/z/1"]


def problem(seed: int, n_rows: int = 200):
    rng = np.random.default_rng(seed)
    cases = np.array([f"p{int(c):03d}" for c in rng.integers(0, 40, n_rows)], dtype=object)
    case_label = {c: rng.choice(LABELS) for c in set(cases)}
    labels = np.array(
        [case_label[c] if rng.random() < 0.8 else rng.choice(LABELS) for c in cases], dtype=object
    )
    case_split = {c: rng.random() < 0.75 for c in set(cases)}  # index and queries do not share cases
    split = np.array([case_split[c] for c in cases])
    emb = rng.normal(size=(n_rows, 8)) + 2.0 * np.array([LABELS.index(x) for x in labels])[
        :, None
    ] * rng.normal(size=(1, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, labels, cases, np.flatnonzero(split), np.flatnonzero(~split)


def exact_search(emb, query_rows, calls):
    def search(rows, k):
        calls.append(np.array(rows))
        sims = emb[query_rows] @ emb[rows].T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return rows[order]

    return search


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 1.0])
def test_subsample_keeps_whole_cases_per_stratum(fraction):
    _, labels, cases, index_rows, _ = problem(0)
    sub = index_size.stratified_case_subsample(index_rows, labels, cases, fraction, np.random.default_rng(1))
    kept = set(cases[sub])
    # whole cases: every index row of a kept case is kept
    assert set(sub) == {r for r in index_rows if cases[r] in kept}
    main = index_size.case_classes(labels[index_rows], cases[index_rows])
    for label in set(main.values()):
        stratum = [c for c, lab in main.items() if lab == label]
        assert sum(c in kept for c in stratum) == max(1, round(fraction * len(stratum)))
    again = index_size.stratified_case_subsample(
        index_rows, labels, cases, fraction, np.random.default_rng(1)
    )
    np.testing.assert_array_equal(sub, again)
    with pytest.raises(ValueError, match="'fraction'"):
        index_size.stratified_case_subsample(index_rows, labels, cases, 0, np.random.default_rng(1))


def test_case_classes_ties_go_to_the_first_label():
    got = index_size.case_classes(np.array(["b", "a", "c", "c"]), np.array([1, 1, 2, 2]))
    assert got == {1: "a", 2: "c"}


@pytest.mark.parametrize("seed", range(2))
def test_index_size_study_matches_reference(seed):
    emb, labels, cases, index_rows, query_rows = problem(seed)
    calls: list[np.ndarray] = []
    ns = (1, 3, 5)
    fractions = (0.25, 1.0)
    got = index_size.index_size_study(
        exact_search(emb, query_rows, calls),
        query_rows,
        index_rows,
        labels,
        cases,
        fractions=fractions,
        repeats=3,
        ns=ns,
        n_boot=25,
        seed=seed,
        progress=False,
    )
    assert len(calls) == 3 + 1
    index_labels = [labels[r] for r in index_rows]
    valid = [i for i, r in enumerate(query_rows) if labels[r] in index_labels]
    qlab = [labels[query_rows[i]] for i in valid]
    qcase = [cases[query_rows[i]] for i in valid]
    by_fraction = {0.25: calls[:3], 1.0: calls[3:]}
    for fraction, subs in by_fraction.items():
        for average in ("micro", "macro"):
            per_rep, pooled, chances, ceilings = [], [], [], []
            for sub in subs:
                sims = emb[query_rows] @ emb[sub].T
                values, expected, reachable = [], [], []
                sub_labels = [labels[r] for r in sub]
                m = len(sub)
                for i in valid:
                    ranked = [labels[sub[j]] for j in np.argsort(-sims[i], kind="stable")[: max(ns)]]
                    n_c = sub_labels.count(labels[query_rows[i]])
                    plain = [sum(x == labels[query_rows[i]] for x in ranked[:n]) / n for n in ns]
                    hit = [float(labels[query_rows[i]] in ranked[:n]) for n in ns]
                    values.append(plain + hit)
                    reachable.append([min(n_c, n) / n for n in ns] + [float(n_c > 0)] * len(ns))
                    expected.append(
                        [n_c / m] * len(ns) + [1 - math.comb(m - n_c, n) / math.comb(m, n) for n in ns]
                    )
                per_rep.append(slow.average(values, qlab, average))
                pooled.append(slow.resamples(values, qlab, qcase, average, 25, seed))
                chances.append(slow.average(expected, qlab, average))
                ceilings.append(slow.average(reachable, qlab, average))
            pooled = np.vstack(pooled)
            part = got[(got["fraction"] == fraction) & (got["average"] == average)]
            np.testing.assert_allclose(part["estimate"], np.mean(per_rep, axis=0), atol=1e-12)
            np.testing.assert_allclose(part["low"], np.percentile(pooled, 2.5, axis=0), atol=1e-12)
            np.testing.assert_allclose(part["high"], np.percentile(pooled, 97.5, axis=0), atol=1e-12)
            np.testing.assert_allclose(part["chance"], np.mean(chances, axis=0), atol=1e-12)
            np.testing.assert_allclose(part["ceiling"], np.mean(ceilings, axis=0), atol=1e-12)
            n_idx = {len({cases[r] for r in s}) for s in subs}
            assert len(n_idx) == 1 and (part["index_cases"] == n_idx.pop()).all()
            assert pd.api.types.is_integer_dtype(part["index_cases"])
            sd = np.std(per_rep, axis=0, ddof=1) if len(subs) > 1 else np.zeros(2 * len(ns))
            np.testing.assert_allclose(part["repeat_sd"], sd, atol=1e-12)
            assert part["metric"].tolist() == ["plain P@N"] * 3 + ["hit@N"] * 3
            assert (part["index_images"] == np.mean([len(s) for s in subs])).all()
            assert (part["n_cases"] == len(set(qcase))).all() and (part["n_queries"] == len(valid)).all()


def test_search_is_checked():
    emb, labels, cases, index_rows, query_rows = problem(0)
    with pytest.raises(ValueError, match="outside the subsampled index"):
        index_size.index_size_study(
            lambda rows, k: np.tile(index_rows[:k], (len(query_rows), 1)),
            query_rows,
            index_rows,
            labels,
            cases,
            fractions=(0.1,),
            repeats=1,
            n_boot=5,
            progress=False,
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_case_sample_keeps_whole_cases_and_every_class(seed: int) -> None:
    _, labels, cases, _, queries = problem(seed, n_rows=400)
    n_cases = len(set(cases[queries]))
    every = index_size.sample_query_cases(queries, labels, cases, None)
    assert np.array_equal(every, np.sort(queries))
    assert np.array_equal(index_size.sample_query_cases(queries, labels, cases, n_cases), every)
    got = index_size.sample_query_cases(queries, labels, cases, 4, seed=seed)
    assert np.array_equal(got, index_size.sample_query_cases(queries, labels, cases, 4, seed=seed))  # seeded
    drawn = set(cases[got])
    assert np.array_equal(got, np.sort(queries[np.isin(cases[queries], list(drawn))]))  # all rows of a case
    main = index_size.case_classes(labels[queries].astype(str), cases[queries])
    assert {main[c] for c in drawn} == set(main.values())  # every main class keeps a case
    per_class = pd.Series(main).value_counts()  # one stratum per class: max(1, round(share x its cases))
    assert len(drawn) == sum(max(1, round(4 / n_cases * m)) for m in per_class)
    with pytest.raises(ValueError, match="'max_cases' = 0"):
        index_size.sample_query_cases(queries, labels, cases, 0)


def test_query_note_says_which_queries_and_which_search() -> None:
    cases = np.array(["p1", "p1", "p2", "p3", "p3", "p4"], dtype=object)
    everything = index_size.query_note(np.arange(6), np.arange(6), cases, "exact (flat) search")
    assert (
        everything
        == "All 6 test queries (4 cases) are used; each index subsample is searched with exact (flat) search."
    )
    some = index_size.query_note(np.array([0, 1, 5]), np.arange(6), cases, "the config's search (ivfpq)")
    assert some.startswith("A seeded sample of 2 of the 4 test-query cases (3 of 6 queries)")
    assert index_size.query_note(np.array([2, 4]), np.arange(6), None, "x").startswith(
        "A seeded sample of 2 of the 6"
    )


@pytest.mark.parametrize(("seed", "k_full"), [(0, 300), (1, 12), (2, 3)])
def test_exact_search_answers_every_subsample_from_one_search(seed: int, k_full: int) -> None:
    """Against a search of each subsample itself; a small k_full makes many queries fall back to that search."""
    from cbmir.search import search_rows

    emb, labels, cases, index, queries = problem(seed, n_rows=300)
    emb = emb + np.random.default_rng(seed).normal(scale=0.3, size=emb.shape)  # no exact ties
    search = index_size.exact_search(emb.astype(np.float32), queries, index, cases, k_full=k_full)
    rng = np.random.default_rng(seed)
    for fraction in (0.1, 0.25, 0.5, 1.0):
        sub = index_size.stratified_case_subsample(index, labels, cases, fraction, rng)
        k = min(10, len(sub) - 8)  # room for the largest own-case count
        want = search_rows(
            emb.astype(np.float32), sub, queries, k=k, cases=cases, index_type="flat", progress=False
        )
        np.testing.assert_array_equal(search(sub, k), want.ids)


def _slow_subsample(index_rows, labels, cases, fraction, rng):
    """The plain loops: each case's main label (ties: first in sorted order), strata in label order, cases sorted."""
    from cbmir.metrics import bootstrap

    case_of = bootstrap.case_codes(np.asarray(cases, dtype=object), len(labels))
    counts: dict = {}
    for r in index_rows:
        counts.setdefault(case_of[r], {}).setdefault(str(labels[r]), 0)
        counts[case_of[r]][str(labels[r])] += 1
    main = {c: sorted(n.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for c, n in counts.items()}
    keep: list[int] = []
    for label in sorted(set(main.values())):
        stratum = np.array(sorted(c for c, lab in main.items() if lab == label))
        keep.extend(
            rng.choice(stratum, size=max(1, int(round(fraction * len(stratum)))), replace=False).tolist()
        )
    return np.sort(np.asarray(index_rows)[np.isin(case_of[index_rows], keep)])


@pytest.mark.parametrize("seed", range(4))
def test_subsample_draws_what_the_plain_loops_draw(seed):
    """The same cases from the same random stream: results of earlier runs do not move."""
    _, labels, cases, index_rows, _ = problem(seed, n_rows=500)
    for fraction in (0.1, 0.25, 0.5):
        got = index_size.stratified_case_subsample(
            index_rows, labels, cases, fraction, np.random.default_rng(seed)
        )
        want = _slow_subsample(index_rows, labels, cases, fraction, np.random.default_rng(seed))
        np.testing.assert_array_equal(got, want)
    ties = index_size.case_classes(
        np.array(["b", "a", "a", "b", "c"]), np.array(["p2", "p2", "p1", "p1", "p3"])
    )
    assert ties == {"p1": "a", "p2": "a", "p3": "c"}


def test_realised_note_gives_each_fractions_share_of_cases_and_images():
    study = pd.DataFrame({"fraction": [0.1, 0.1, 0.5, 1.0], "index_cases": [23, 23, 40, 60],
                          "index_images": [77.2, 77.2, 90.0, 122.5]})  # fmt: skip
    assert index_size.realised_note(study) == (
        "Realised index per fraction (mean over repeats): 0.1 -> 23 of 60 cases (38 %) and 63 % of the images; "
        "0.5 -> 40 of 60 cases (67 %) and 73 % of the images; 1 -> 60 of 60 cases (100 %) and 100 % of the images."
    )
