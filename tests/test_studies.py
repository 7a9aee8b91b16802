"""The report's analyses against slow, obviously correct references on small random tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cbmir import metrics, studies
from cbmir.pipeline import subsample_per_class
from cbmir.search import Neighbours, search_rows

REGIONS = {
    "CT/lung": ["lesion", "normal"],
    "MR/brain": ["glioma", "normal", "meningioma"],
    "XR/chest": ["pneumonia"],
}


def random_manifest(n: int, rng: np.random.Generator) -> pd.DataFrame:
    labels = [f"{r}/{f}" for r, fs in REGIONS.items() for f in fs]
    chosen = rng.choice(labels, size=n)
    df = pd.DataFrame(
        {
            "filepath": [f"img{i:04d}.png" for i in range(n)],
            "dataset": rng.choice(["a", "b"], size=n),
            "split": rng.choice(["train", "val", "test"], size=n, p=[0.6, 0.1, 0.3]),
            "modality": [c.split("/")[0] for c in chosen],
            "anatomic_region": [c.split("/")[1] for c in chosen],
        }
    )
    for lab in labels:
        df[lab] = (chosen == lab).astype(int)
    return df


def random_neighbours(df: pd.DataFrame, k: int, rng: np.random.Generator) -> Neighbours:
    index_rows = np.flatnonzero(df["split"] == "train")
    query_rows = np.flatnonzero(df["split"] == "test")
    ids = np.stack([rng.choice(index_rows, size=k, replace=False) for _ in query_rows])
    return Neighbours(query_rows, ids, np.zeros(ids.shape, np.float32), index_rows)


def labels_of(df: pd.DataFrame, level: str) -> np.ndarray:
    full = np.array([next(c for c in df.columns if "/" in c and row[c] == 1) for _, row in df.iterrows()])
    parts = {"modality": 1, "region": 2, "label": 3}[level]
    return np.array(["/".join(x.split("/")[:parts]) for x in full])


@pytest.mark.parametrize("seed", range(5))
def test_pathology_given_anatomy_matches_reference(seed):
    rng = np.random.default_rng(seed)
    df = random_manifest(120, rng)
    nb = random_neighbours(df, 10, rng)
    got = studies.pathology_given_anatomy(nb, df, ns=(1, 3, 10)).set_index("N")
    region, label = labels_of(df, "region"), labels_of(df, "label")
    for n in (1, 3, 10):
        shares = []
        for q, row in zip(nb.query_rows, nb.ids, strict=True):
            anat = [r for r in row[:n] if region[r] == region[q]]
            if anat:
                shares.append(sum(label[r] == label[q] for r in anat) / len(anat))
        assert got.loc[n, "queries"] == len(shares)
        assert got.loc[n, "pathology precision | anatomy hit"] == pytest.approx(np.mean(shares), abs=1e-12)


def test_level_precision_is_retrieval_metrics_at_each_level():
    rng = np.random.default_rng(3)
    df = random_manifest(150, rng)
    nb = random_neighbours(df, 12, rng)
    got = studies.level_precision(nb, df, ns=(1, 5, 10))
    for level in ("modality", "region", "label"):
        ref = metrics.retrieval_metrics(nb, labels_of(df, level), max_n=12).set_index("N")
        part = got[got["level"] == level].set_index("N")
        for n in (1, 5, 10):
            assert part.loc[n, "micro"] == pytest.approx(ref.loc[n, "micro"], abs=1e-12)
            assert part.loc[n, "macro"] == pytest.approx(ref.loc[n, "macro"], abs=1e-12)
    # anatomy is at least as easy as pathology: a label hit is always a region hit, which is always a modality hit
    micro = got[got["N"] == 1].set_index("level")["micro"]
    assert micro["modality"] >= micro["region"] >= micro["label"]


def test_breakdown_single_group_equals_overall_and_groups_partition_queries():
    rng = np.random.default_rng(4)
    df = random_manifest(200, rng)
    nb = random_neighbours(df, 10, rng)
    overall = metrics.retrieval_metrics(nb, labels_of(df, "label"), max_n=10).set_index("N")
    df1 = df.assign(dataset="only")
    one = studies.breakdown(nb, df1, "dataset").iloc[0]
    assert one["micro P@5"] == pytest.approx(overall.loc[5, "micro"], abs=1e-12)
    assert one["macro P@10"] == pytest.approx(overall.loc[10, "macro"], abs=1e-12)
    parts = studies.breakdown(nb, df, "dataset")
    assert parts["queries"].sum() == overall.attrs["n_queries"]


def test_summary_numbers_equal_metrics_and_best_has_zero_difference():
    rng = np.random.default_rng(5)
    df = random_manifest(160, rng)
    nbs = {"m1": random_neighbours(df, 10, rng), "m2": random_neighbours(df, 10, rng)}
    table = studies.summary_table(nbs, df, n_boot=50, seed=0).set_index("model")
    for model, nb in nbs.items():
        ref = metrics.retrieval_metrics(nb, labels_of(df, "label"), max_n=10).set_index("N")
        for n in (1, 3, 5, 10):
            assert table.loc[model, f"micro P@{n}"] == pytest.approx(ref.loc[n, "micro"], abs=1e-12)
            assert table.loc[model, f"macro P@{n}"] == pytest.approx(ref.loc[n, "macro"], abs=1e-12)
    best = table["micro P@1"].idxmax()
    assert table.loc[best, "rank"] == 1
    assert table.loc[best, "micro P@1 − best"] == 0
    other = [m for m in nbs if m != best][0]
    assert table.loc[other, "micro P@1 − best"] == pytest.approx(
        table.loc[other, "micro P@1"] - table.loc[best, "micro P@1"], abs=1e-12
    )


def test_summary_rejects_models_scored_on_different_queries():
    rng = np.random.default_rng(6)
    df = random_manifest(100, rng)
    a = random_neighbours(df, 5, rng)
    b = Neighbours(a.query_rows[1:], a.ids[1:], a.scores[1:], a.index_rows)
    with pytest.raises(ValueError, match="different queries"):
        studies.summary_table({"a": a, "b": b}, df, n_boot=10)


def test_stratified_subsample_keeps_every_class_and_the_fraction():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["a", "b", "c"]), [100, 10, 1])
    pos = studies.stratified_subsample(labels, 0.3, rng)
    kept = pd.Series(labels[pos]).value_counts()
    assert kept.to_dict() == {"a": 30, "b": 3, "c": 1}
    assert len(set(pos)) == len(pos)
    with pytest.raises(ValueError, match="fraction"):
        studies.stratified_subsample(labels, 0.0, rng)


def test_index_size_curve_full_index_equals_plain_retrieval():
    rng = np.random.default_rng(7)
    df = random_manifest(180, rng)
    emb = rng.normal(size=(len(df), 16)).astype(np.float32)
    labels = labels_of(df, "label")
    index_rows = np.flatnonzero(df["split"] == "train")
    query_rows = np.flatnonzero(df["split"] == "test")
    curve = studies.index_size_curve(
        emb, labels, index_rows, query_rows, fractions=(0.5, 1.0), repeats=3, ns=(1, 5), k=20, seed=0
    )
    assert len(curve[curve["fraction"] == 0.5]) == 3 * 2  # repeats x Ns
    full = curve[curve["fraction"] == 1.0].set_index("N")
    nb = search_rows(emb, index_rows, query_rows, k=20, progress=False)
    ref = metrics.retrieval_metrics(nb, labels, max_n=20).set_index("N")
    for n in (1, 5):
        assert full.loc[n, "micro"] == pytest.approx(ref.loc[n, "micro"], abs=1e-12)
        assert full.loc[n, "macro"] == pytest.approx(ref.loc[n, "macro"], abs=1e-12)
    # the config's index reaches every search: IVF probing all its lists is exact, a wrong parameter raises
    ivf = {"index_type": "ivf", "nlist": 4, "nprobe": 4}
    same = studies.index_size_curve(
        emb, labels, index_rows, query_rows, (1.0,), k=20, ns=(1, 5), search_settings=ivf
    ).set_index("N")
    np.testing.assert_allclose(same[["micro", "macro"]], full[["micro", "macro"]], atol=1e-12)
    with pytest.raises(ValueError, match="'ivf' has no parameter"):
        studies.index_size_curve(
            emb, labels, index_rows, query_rows, (1.0,), search_settings={**ivf, "ef_search": 9}
        )


def test_embedding_space_purity_matches_reference():
    rng = np.random.default_rng(8)
    df = random_manifest(60, rng)
    emb = rng.normal(size=(len(df), 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    got = studies.embedding_space_scores(emb, df, k=5).set_index("level")
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    for level in ("modality", "region", "label"):
        labels = labels_of(df, level)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
        ref = np.mean([[labels[j] == labels[i] for j in row] for i, row in enumerate(top)])
        assert got.loc[level, "kNN purity (k=5)"] == pytest.approx(ref, abs=1e-12)
        assert -1 <= got.loc[level, "silhouette (cosine)"] <= 1


def test_subsample_per_class_is_deterministic_and_order_independent():
    rng = np.random.default_rng(9)
    df = random_manifest(300, rng)
    a = subsample_per_class(df, 3)
    b = subsample_per_class(df.sample(frac=1, random_state=1).reset_index(drop=True), 3)
    assert sorted(a["filepath"]) == sorted(b["filepath"])
    counts = pd.DataFrame({"split": a["split"], "label": labels_of(a, "label")}).value_counts()
    assert counts.max() <= 3


def test_paper_comparison_only_side_by_side_for_the_paper_setup():
    summary = pd.DataFrame({"model": ["biomedclip"], **{f"micro P@{n}": [0.5] for n in (1, 3, 5, 10)}})
    mini = studies.paper_comparison(summary, "radmini")
    assert "ours (BiomedCLIP, micro)" not in mini and mini["setup"].str.contains("not comparable").all()
    paper = studies.paper_comparison(summary, "paper")
    assert paper["ours (BiomedCLIP, micro)"].tolist() == [0.5] * 4
    assert paper["paper (BiomedCLIP, micro)"].tolist() == [0.594, 0.590, 0.588, 0.583]


def test_sample_rows_cover_each_group_and_spread_over_labels():
    rng = np.random.default_rng(10)
    df = random_manifest(200, rng)
    samples = studies.sample_rows(df, by="modality", per_group=4, seed=0)
    assert set(samples) == set(df["modality"])
    labels = labels_of(df, "label")
    for modality, rows in samples.items():
        assert 0 < len(rows) <= 4 and (df["modality"].iloc[rows] == modality).all()
        available = len(set(labels[(df["modality"] == modality).to_numpy()]))
        assert len(set(labels[rows])) == min(available, len(rows))  # round-robin over the labels
    assert samples == studies.sample_rows(df, by="modality", per_group=4, seed=0)


def test_summary_ties_are_broken_deterministically():
    rng = np.random.default_rng(11)
    df = random_manifest(160, rng)
    a = random_neighbours(df, 10, rng)
    table = studies.summary_table({"b": a, "a": a}, df, n_boot=10)  # identical neighbours: a full tie
    assert table.attrs["best"] == "a" and table["model"].tolist() == ["a", "b"]
    assert (table["rank"] == 1).all()
