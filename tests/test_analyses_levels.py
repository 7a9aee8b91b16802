"""cbmir.analyses.levels against slow loops over queries and the slow cluster bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import slow_stats as slow
from cbmir.analyses import levels

LABELS = [
    "CT/lung/lesion",
    "CT/lung/normal",
    "MR/brain/glioma",
    "MR/brain/normal",
    "MR/brain/tumour",
    "XR/chest/a",
]


def problem(seed: int, n_rows: int = 150, k: int = 10):
    rng = np.random.default_rng(seed)
    labels = rng.choice(LABELS, n_rows).astype(object)
    regions = np.array(["/".join(x.split("/")[:2]) for x in labels], dtype=object)
    modality = np.array([x.split("/")[0] for x in labels], dtype=object)
    cases = np.array([f"p{int(c):03d}" for c in rng.integers(0, 25, n_rows)], dtype=object)
    split = rng.random(n_rows) < 0.7
    index_rows, query_rows = np.flatnonzero(split), np.flatnonzero(~split)

    def table():
        out = []
        for qr in query_rows:
            same = [r for r in index_rows if regions[r] == regions[qr]]
            first = (
                list(rng.choice(same, size=min(2, len(same)), replace=False)) if rng.random() < 0.6 else []
            )
            rest = [r for r in rng.permutation(index_rows) if r not in first]
            out.append(first + rest[: k - len(first)])
        return np.array(out)

    return table(), table(), query_rows, index_rows, modality, regions, labels, cases


def ref_shares(ids, query_rows, regions, labels, n):
    out = []
    for qr, row in zip(query_rows, ids, strict=True):
        anat = [r for r in row[:n] if regions[r] == regions[qr]]
        out.append(sum(labels[r] == labels[qr] for r in anat) / len(anat) if anat else np.nan)
    return out


def ref_chance(qr, index_rows, regions, labels):
    n_region = sum(1 for r in index_rows if regions[r] == regions[qr])
    return sum(1 for r in index_rows if labels[r] == labels[qr]) / n_region if n_region else np.nan


@pytest.mark.parametrize("seed", range(3))
def test_level_precision_matches_reference(seed):
    ids, _, qr, ir, modality, regions, labels, cases = problem(seed)
    got = levels.level_precision(
        ids, qr, ir, {"modality": modality, "region": regions, "label": labels}, cases, n_boot=30, seed=seed
    )
    qcase = [cases[r] for r in qr]
    for level, lab in (("modality", modality), ("region", regions), ("label", labels)):
        index_labels = [lab[r] for r in ir]
        per_query = [
            [
                slow.precision([lab[r] for r in row], lab[q], index_labels.count(lab[q]), n)
                for n in (1, 3, 5, 10)
            ]
            for q, row in zip(qr, ids, strict=True)
        ]
        part = got[got["level"] == level]
        for kind in ("micro", "macro"):
            want = slow.interval(per_query, [lab[r] for r in qr], qcase, kind, 30, seed)
            np.testing.assert_allclose(part[kind], want["estimate"], atol=1e-12)
            np.testing.assert_allclose(part[f"{kind}_lo"], want["low"], atol=1e-12)
            np.testing.assert_allclose(part[f"{kind}_hi"], want["high"], atol=1e-12)
        rows, _ = slow.defined(per_query, qcase)
        chance = [index_labels.count(lab[qr[i]]) / len(ir) for i in rows]
        np.testing.assert_allclose(part["chance_micro"], np.mean(chance), atol=1e-12)


def slow_holm(p: list[float]) -> list[float]:
    """Holm step-down: the i-th smallest p times (m - i), made monotone, capped at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


@pytest.mark.parametrize("seed", range(3))
def test_level_contrast_matches_reference(seed):
    ids_a, ids_b, qr, ir, _, regions, labels, cases = problem(seed)
    if seed == 2:  # a label absent from the index: its queries are defined at the region level only
        labels = labels.copy()
        labels[[r for r in ir if labels[r] == "MR/brain/glioma"]] = "MR/brain/normal"
        labels[qr[0]] = "MR/brain/glioma"
        regions = regions.copy()
        regions[qr[0]] = "MR/brain"
    got = levels.level_contrast(
        {"a": ids_a, "b": ids_b}, qr, ir, {"region": regions, "label": labels}, cases, n_boot=40, seed=seed
    )
    assert list(got.columns) == [
        "model", "N", "region", "region chance", "region excess", "region corrected", "label", "label chance",
        "label excess", "label corrected", "difference", "low", "high", "p_value", "p_holm", "p_min", "n_queries", "n_cases",
    ]  # fmt: skip
    assert np.allclose(got["p_min"], 2 / 41) and (got["p_value"] >= got["p_min"]).all()
    qcase = [cases[r] for r in qr]
    for model, ids in (("a", ids_a), ("b", ids_b)):
        per_level = {}
        for level, lab in (("region", regions), ("label", labels)):
            index_labels = [lab[r] for r in ir]
            per_level[level] = [  # (P - chance) / (1 - chance), chance = n_c / M
                [(slow.precision([lab[r] for r in row], lab[q], index_labels.count(lab[q]), n)
                  - index_labels.count(lab[q]) / len(ir)) / (1 - index_labels.count(lab[q]) / len(ir))
                 for n in (1, 3, 5, 10)]
                for q, row in zip(qr, ids, strict=True)
            ]  # fmt: skip
        diff = [
            [a - b for a, b in zip(ra, rb, strict=True)]
            for ra, rb in zip(per_level["region"], per_level["label"], strict=True)
        ]
        part = got[got["model"] == model]
        want = slow.interval(diff, [0] * len(diff), qcase, "micro", 40, seed)
        np.testing.assert_allclose(part["difference"], want["estimate"], atol=1e-12)
        np.testing.assert_allclose(part["low"], want["low"], atol=1e-12)
        np.testing.assert_allclose(part["high"], want["high"], atol=1e-12)
        assert (part["n_queries"] == want["n_queries"]).all() and (part["n_cases"] == want["n_cases"]).all()
        rows, _ = slow.defined(diff, qcase)
        in_index = {labels[r] for r in ir}
        assert len(rows) == sum(labels[q] in in_index for q in qr) < len(qr) + (seed != 2)
        for level in ("region", "label"):
            kappa = slow.average([per_level[level][i] for i in rows], [0] * len(rows), "micro")
            np.testing.assert_allclose(part[f"{level} corrected"], kappa, atol=1e-12)
            np.testing.assert_allclose(
                part[level] - part[f"{level} chance"], part[f"{level} excess"], atol=1e-12
            )
        stats = slow.resamples(diff, [0] * len(diff), qcase, "micro", 40, seed)
        p = [
            min(1.0, 2 * min((stats[:, j] <= 0).sum() + 1, (stats[:, j] >= 0).sum() + 1) / 41)
            for j in range(4)
        ]
        np.testing.assert_allclose(part["p_value"], p, atol=1e-12)
    for _, g in got.groupby("N"):
        np.testing.assert_allclose(g["p_holm"], slow_holm(g["p_value"].tolist()), atol=1e-12)
    with pytest.raises(KeyError, match="no 'label' level"):
        levels.level_contrast({"a": ids_a}, qr, ir, {"region": regions}, cases)


@pytest.mark.parametrize("seed", range(3))
def test_pathology_given_anatomy_matches_reference(seed):
    ids, _, qr, ir, _, regions, labels, cases = problem(seed)
    got = levels.pathology_given_anatomy(
        ids, qr, ir, regions, labels, cases, ns=(1, 3, 10), n_boot=30, seed=3
    )
    chance = [ref_chance(q, ir, regions, labels) for q in qr]
    for n in (1, 3, 10):
        shares = ref_shares(ids, qr, regions, labels, n)
        for region in [levels.ALL, *sorted(set(regions[qr]))]:
            sel = [
                i
                for i in range(len(qr))
                if not np.isnan(shares[i]) and (region == levels.ALL or regions[qr[i]] == region)
            ]
            row = got[(got["region"] == region) & (got["N"] == n)].iloc[0]
            assert row["n_queries"] == len(sel) and row["n_cases"] == len({cases[qr[i]] for i in sel})
            if not sel:
                continue
            obs = slow.interval(
                [[shares[i]] for i in sel], [0] * len(sel), [cases[qr[i]] for i in sel], "micro", 30, 3
            )
            diff = slow.interval(
                [[shares[i] - chance[i]] for i in sel],
                [0] * len(sel),
                [cases[qr[i]] for i in sel],
                "micro",
                30,
                3,
            )
            np.testing.assert_allclose(
                row[["share", "share_lo", "share_hi"]].to_numpy(float),
                [obs["estimate"][0], obs["low"][0], obs["high"][0]],
                atol=1e-12,
            )
            np.testing.assert_allclose(row["chance"], np.mean([chance[i] for i in sel]), atol=1e-12)
            np.testing.assert_allclose(
                row[["difference", "difference_lo", "difference_hi"]].to_numpy(float),
                [diff["estimate"][0], diff["low"][0], diff["high"][0]],
                atol=1e-12,
            )
            stats = slow.resamples(
                [[shares[i] - chance[i]] for i in sel],
                [0] * len(sel),
                [cases[qr[i]] for i in sel],
                "micro",
                30,
                3,
            )[:, 0]
            p = min(1.0, 2 * min((stats <= 1e-12).sum() + 1, (stats >= -1e-12).sum() + 1) / 31)
            np.testing.assert_allclose(row["p_value"], p, atol=1e-12)
            assert row["p_min"] == pytest.approx(2 / 31)
    # Holm at each N: the pooled row alone (one model), and the region rows with enough cases together
    for _, part in got.groupby("N"):
        pooled = part[part["region"] == levels.ALL].iloc[0]
        if pooled["n_cases"] >= 5:
            assert pooled["p_holm"] == pooled["p_value"]
        tested = part[(part["region"] != levels.ALL) & (part["n_cases"] >= 5)]
        np.testing.assert_allclose(tested["p_holm"], slow_holm(tested["p_value"].tolist()), atol=1e-12)
        assert part.loc[part["n_cases"] < 5, "p_holm"].isna().all()


def test_models_are_compared_on_one_common_set_of_queries():
    ids_a, ids_b, qr, ir, _, regions, labels, cases = problem(7)
    got = levels.pathology_given_anatomy_models(
        {"a": ids_a, "b": ids_b}, qr, ir, regions, labels, cases, ns=(1, 5), n_boot=20
    )
    chance = [ref_chance(q, ir, regions, labels) for q in qr]
    for n in (1, 5):
        sa, sb = ref_shares(ids_a, qr, regions, labels, n), ref_shares(ids_b, qr, regions, labels, n)
        common = [i for i in range(len(qr)) if not np.isnan(sa[i]) and not np.isnan(sb[i])]
        assert 0 < len(common) < len(qr)
        part = got[got["N"] == n].set_index("model")
        assert (part["n_queries"] == len(common)).all()
        np.testing.assert_allclose(part.loc["a", "share"], np.mean([sa[i] for i in common]), atol=1e-12)
        np.testing.assert_allclose(part.loc["b", "share"], np.mean([sb[i] for i in common]), atol=1e-12)
        np.testing.assert_allclose(part["chance"], np.mean([chance[i] for i in common]), atol=1e-12)


def test_models_are_compared_per_region_on_the_common_queries():
    ids_a, ids_b, qr, ir, _, regions, labels, cases = problem(11)
    got = levels.pathology_given_anatomy_models(
        {"a": ids_a, "b": ids_b}, qr, ir, regions, labels, cases, ns=(1, 5), n_boot=20, by_region=True
    )
    overall = levels.pathology_given_anatomy_models(
        {"a": ids_a, "b": ids_b}, qr, ir, regions, labels, cases, ns=(1, 5), n_boot=20
    )
    chance = [ref_chance(q, ir, regions, labels) for q in qr]
    region_of = [regions[q] for q in qr]
    for n in (1, 5):
        sa, sb = ref_shares(ids_a, qr, regions, labels, n), ref_shares(ids_b, qr, regions, labels, n)
        common = [i for i in range(len(qr)) if not np.isnan(sa[i]) and not np.isnan(sb[i])]
        for region in sorted({region_of[i] for i in common}):
            sel = [i for i in common if region_of[i] == region]
            part = got[(got["N"] == n) & (got["region"] == region)].set_index("model")
            assert (part["n_queries"] == len(sel)).all()
            np.testing.assert_allclose(part.loc["a", "share"], np.mean([sa[i] for i in sel]), atol=1e-12)
            np.testing.assert_allclose(part.loc["b", "share"], np.mean([sb[i] for i in sel]), atol=1e-12)
            np.testing.assert_allclose(part["chance"], np.mean([chance[i] for i in sel]), atol=1e-12)
        everything = got[(got["N"] == n) & (got["region"] == levels.ALL)].drop(columns="region")
        pd.testing.assert_frame_equal(
            everything.reset_index(drop=True), overall[overall["N"] == n].reset_index(drop=True)
        )


def test_classes_per_region():
    got = levels.classes_per_region(LABELS)
    assert dict(zip(got["region"], got["classes"], strict=True)) == {
        "CT/lung": 2,
        "MR/brain": 3,
        "XR/chest": 1,
    }


def test_n_at_or_above_the_region_index_size_is_left_out():
    ids, ids_b, qr, ir, _, regions, labels, cases = problem(5, k=40)
    sizes = {r: sum(1 for i in ir if regions[i] == r) for r in set(regions)}
    small = min(sizes, key=sizes.get)
    ns = (1, sizes[small] - 1, sizes[small], 40)
    assert sizes[small] < 40 < min(v for r, v in sizes.items() if r != small)
    got = levels.pathology_given_anatomy(ids, qr, ir, regions, labels, cases, ns=ns, n_boot=10)
    kept = levels.pathology_given_anatomy(
        ids, qr, ir, regions, labels, cases, ns=ns, n_boot=10, drop_uninformative=False
    )
    for n in ns:
        shares = ref_shares(ids, qr, regions, labels, n)
        informative = [i for i in range(len(qr)) if not np.isnan(shares[i]) and n < sizes[regions[qr[i]]]]
        row = got[(got["region"] == levels.ALL) & (got["N"] == n)].iloc[0]
        assert row["n_queries"] == len(informative)
        np.testing.assert_allclose(row["share"], np.mean([shares[i] for i in informative]), atol=1e-12)
        has_small = not got[(got["region"] == small) & (got["N"] == n)].empty
        assert has_small == (n < sizes[small])
        assert not kept[(kept["region"] == small) & (kept["N"] == n)].empty
    listed = levels.uninformative_pairs(qr, ir, regions, ns)
    assert listed["region"].tolist() == [small]
    assert listed["N left out"].iloc[0] == f"{sizes[small]}, 40"
    assert listed["index images"].iloc[0] == sizes[small]
    both = levels.pathology_given_anatomy_models(
        {"a": ids, "b": ids_b}, qr, ir, regions, labels, cases, ns=ns, n_boot=10, by_region=True
    )
    assert both[(both["region"] == small) & (both["N"] >= sizes[small])].empty


def test_chance_corrected_scores_reach_1_at_every_level():
    from cbmir.metrics import chance

    got = chance.corrected(np.array([1.0, 0.4, 0.1, 0.5, np.nan]), np.array([0.4, 0.4, 0.55, 1.0, 0.2]))
    np.testing.assert_allclose(got, [1.0, 0.0, (0.1 - 0.55) / 0.45, np.nan, np.nan])
    # a perfect model at both levels: the plain excesses differ by the chance values, the corrected ones do not
    region_chance, label_chance = 0.4, 0.05
    assert (1 - label_chance) - (1 - region_chance) > 0.3
    assert chance.corrected(1.0, region_chance) == chance.corrected(1.0, label_chance) == 1.0
