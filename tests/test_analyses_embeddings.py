"""cbmir.analyses.embeddings: similarity of images across cases, against slow loops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cbmir.analyses import embeddings
from cbmir.analyses.data import sample_images


def _data(seed, n=40):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.choice(["a", "b", "c"], n)
    cases = rng.integers(0, n // 3, n)
    return x, labels, cases


@pytest.mark.parametrize("seed", range(10))
def test_cosine_separation_matches_a_loop(seed):
    x, labels, cases = _data(seed)
    table = embeddings.cosine_separation(x, labels, cases, max_points=None, n_boot=20).set_index("pair")
    same, diff, blind, kept = [], [], [], []
    for i in range(len(x)):
        s = [float(x[i] @ x[j]) for j in range(len(x)) if cases[j] != cases[i] and labels[j] == labels[i]]
        d = [float(x[i] @ x[j]) for j in range(len(x)) if cases[j] != cases[i] and labels[j] != labels[i]]
        if s and d:
            same.append(np.mean(s))
            diff.append(np.mean(d))
            blind.append(np.mean(s + d))  # every image of another case, whatever its label
            kept.append(cases[i])
    assert table.loc["same label", "mean"] == pytest.approx(np.mean(same), abs=1e-12)
    assert table.loc["different label", "mean"] == pytest.approx(np.mean(diff), abs=1e-12)
    assert table.loc["difference", "mean"] == pytest.approx(np.mean(same) - np.mean(diff), abs=1e-12)
    assert table.loc["same label", "label-blind"] == pytest.approx(np.mean(blind), abs=1e-12)
    assert table.loc["different label", "label-blind"] == pytest.approx(np.mean(blind), abs=1e-12)
    assert table.loc["difference", "label-blind"] == 0
    assert table.loc["difference", "images"] == len(kept)
    assert table.loc["difference", "cases"] == len(set(kept))
    assert (table["ci_low"] <= table["mean"] + 1e-12).all() and (
        table["mean"] <= table["ci_high"] + 1e-12
    ).all()


def test_similarity_pairs_never_pair_one_case():
    x, labels, cases = _data(3)
    cases = np.repeat(np.arange(10), 4)  # four images per case
    x[1::4] = x[0::4]  # images of one case identical: similarity 1 if same-case pairs leaked in
    pairs = embeddings.similarity_pairs(x, labels, cases, max_points=None, max_pairs=10**6)
    n_pairs = sum(1 for i in range(40) for j in range(i + 1, 40) if cases[i] != cases[j])
    assert len(pairs) == n_pairs
    expected_same = sum(
        1 for i in range(40) for j in range(i + 1, 40) if cases[i] != cases[j] and labels[i] == labels[j]
    )
    assert (pairs["pair"] == "same label").sum() == expected_same
    capped = embeddings.similarity_pairs(x, labels, cases, max_points=None, max_pairs=5)
    assert capped["pair"].value_counts().max() == 5


def test_sample_images_takes_labels_in_turn():
    m = pd.DataFrame(
        {"filepath": [f"{i}.png" for i in range(9)], "dataset": "d", "split": "train",
         "modality": ["CT"] * 6 + ["MR"] * 3, "anatomic_region": ["lung"] * 6 + ["brain"] * 3,
         "CT/lung/a": [1, 1, 1, 1, 0, 0, 0, 0, 0], "CT/lung/b": [0, 0, 0, 0, 1, 1, 0, 0, 0],
         "MR/brain/c": [0, 0, 0, 0, 0, 0, 1, 1, 1]}
    )  # fmt: skip
    rows = sample_images(m, by="modality", per_group=4, seed=1)
    assert sorted(rows) == ["CT", "MR"] and len(rows["MR"]) == 3
    ct = rows["CT"]
    assert len(ct) == 4 and sum(r >= 4 for r in ct) == 2  # both b rows, then a rows in turn
    assert rows == sample_images(m, by="modality", per_group=4, seed=1)


def test_store_summary_reports_the_precision_that_ran() -> None:
    from types import SimpleNamespace

    emb = np.eye(3, dtype=np.float32)
    ran_bf16 = SimpleNamespace(
        embeddings=emb, failed=[], provenance={"spec": "m", "seconds": 2.0, "dtype": "bf16", "bf16": False}
    )
    old = SimpleNamespace(embeddings=emb, failed=[], provenance={"spec": "m", "seconds": 2.0, "bf16": True})
    assert (
        embeddings.store_summary(ran_bf16)["precision"].item() == "bf16"
    )  # precision auto: the flag stays False
    assert (
        embeddings.store_summary(old)["precision"].item() == "bf16"
    )  # stores written before `dtype` existed
    row = embeddings.store_summary(ran_bf16).iloc[0]
    assert (row["images"], row["dimension"], row["images/s"]) == (3, 3, 1.5)
    imported = SimpleNamespace(
        embeddings=emb, failed=[], provenance={"spec": "m", "source": "imported from ..."}
    )
    assert embeddings.store_summary(imported)["precision"].item() == "imported"  # no forward pass ran here


def test_provenance_table_shows_one_precision() -> None:
    from types import SimpleNamespace

    prov = {
        "spec": "m",
        "bf16": False,
        "dtype": "bf16",
        "precision": "weights+autocast",
        "speed": {"compile": "compiled"},
    }
    table = embeddings.provenance_table(SimpleNamespace(provenance=prov))
    fields = dict(zip(table["field"], table["value"], strict=True))
    assert (
        "bf16" not in fields and fields["dtype"] == "bf16" and fields["precision mode"] == "weights+autocast"
    )
    assert fields["speed.compile"] == "compiled"
    timed = embeddings.provenance_table(SimpleNamespace(provenance={"seconds": 23.366368064998824, "n": 253}))
    assert dict(zip(timed["field"], timed["value"], strict=True)) == {"seconds": "23.37", "n": "253"}
    summary = embeddings.store_summary(
        SimpleNamespace(embeddings=np.eye(2, dtype=np.float32), failed=[], provenance=prov)
    )
    assert bool(summary["torch.compile"].item()) is True
    slower = {
        **prov,
        "speed": {"compile": "compiled (slower on the example: 0.5 >= 0.25 s/image, ...; kept ...)"},
    }
    slow_row = embeddings.store_summary(
        SimpleNamespace(embeddings=np.eye(2, dtype=np.float32), failed=[], provenance=slower)
    )
    assert bool(slow_row["torch.compile"].item()) is True  # kept although slower: it ran compiled
    imported = embeddings.store_summary(
        SimpleNamespace(embeddings=np.eye(2, dtype=np.float32), failed=[], provenance={"source": "imported"})
    )
    assert imported["torch.compile"].item() is None and imported["precision"].item() == "imported"
    old = embeddings.provenance_table(SimpleNamespace(provenance={"spec": "m", "bf16": True}))
    assert (
        dict(zip(old["field"], old["value"], strict=True))["bf16"] == "True"
    )  # older stores: kept as they are


def test_precision_sentence_names_what_ran_for_each_model() -> None:
    prov = {
        "a": {
            "dtype": "bf16",
            "device": "cpu",
            "speed": {"compile": "compiled", "cpu": "Xeon", "isa": ["amx_bf16"]},
        },
        "b": {"dtype": "bf16", "speed": {"compile": "not compiled: the eager run would take about 9 s"}},
        "pixels": {"dtype": "fp32", "bf16": True},
        "old": {"bf16": True},
        "theirs": {"source": "imported from the authors' published embeddings"},
        "raw": {
            "dtype": "fp32",
            "device": "cpu",
            "speed": {"cpu": "EPYC"},
            "encoder": {"loader": "raw_pixels"},
        },
    }
    text = embeddings.precision_sentence(prov)
    assert "the resized pixels themselves (no network) for raw" in text and "for raw," not in text
    assert "EPYC" not in text  # no forward pass ran for it
    assert "computed in bf16 for a, b, old" in text and "computed in fp32 for pixels" in text
    assert "imported from the authors' published embeddings for theirs" in text
    assert "torch.compile ran for a;" in text and "cosine at least 0.99999 in fp32, 0.99 in bf16" in text
    assert "bench_precision" in text and "Extraction ran on the CPU: Xeon (amx_bf16)." in text
    assert "`precision: auto` (the default) runs bf16 where" in text
    fp32_only = embeddings.precision_sentence({"x": {"dtype": "fp32"}})
    assert fp32_only.startswith(
        "Embeddings: computed in fp32 for x; every store holds float32 rows of unit length."
    )
    assert (
        "torch.compile" not in fp32_only
        and "bench_precision" not in fp32_only
        and "CPU runs" not in fp32_only
    )
    imported = embeddings.precision_sentence({"theirs": prov["theirs"]})
    assert "precision: auto" not in imported  # nothing was computed here


def test_row_norms_in_chunks_match_numpy(monkeypatch):
    from cbmir import search

    x = np.random.default_rng(0).normal(size=(23, 5)).astype(np.float32)
    x[7, 2], x[9, 0] = np.nan, np.inf
    monkeypatch.setattr(search, "NORM_CHUNK", 4)
    got = search.row_norms(x)
    want = np.linalg.norm(x.astype(np.float64), axis=1)
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-12)
    assert not np.isfinite(got[[7, 9]]).any()
    assert search.row_norms(x[:0]).shape == (0,)
