"""cbmir.analyses.embedding_space and its figures against slow loops on small seeded data."""

import numpy as np
import pandas as pd
import pytest
from cbmir import plots
from cbmir.analyses import embedding_space as es


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _data(seed=0, n=40):
    rng = np.random.default_rng(seed)
    cases = rng.integers(0, 12, n)
    code = np.where(rng.random(n) < 0.8, cases * 7 % 30, rng.integers(0, 30, n))  # mostly one label per case
    fine = np.array([f"M{c % 2}/r{c % 3}/f{c % 5}" for c in code])
    levels = {
        "modality": np.array([s.split("/")[0] for s in fine]),
        "region": np.array(["/".join(s.split("/")[:2]) for s in fine]),
        "label": fine,
    }
    emb = rng.normal(size=(n, 6)) * 0.5 + rng.normal(size=(12, 6))[cases] * 1.5  # one case's images are alike
    return emb, levels, cases


def _ref_purity(emb, labels, cases, k):
    hits, chance = [], []
    for i in range(len(emb)):
        others = [j for j in range(len(emb)) if cases[j] != cases[i]]
        nearest = sorted(others, key=lambda j: -_cos(emb[i], emb[j]))[:k]
        hits.append(sum(labels[j] == labels[i] for j in nearest) / k)
        chance.append(sum(labels[j] == labels[i] for j in others) / len(others))
    return np.mean(hits), np.mean(chance)


def test_purity_excludes_the_whole_case_and_matches_a_loop():
    emb, levels, cases = _data()
    table = es.knn_purity(emb, levels, cases, k=5, n_boot=50)
    for row in table.itertuples():
        purity, chance = _ref_purity(emb, levels[row.level], cases, 5)
        assert row.purity == pytest.approx(purity) and row.chance == pytest.approx(chance)
        assert row.ci_low <= row.purity <= row.ci_high
        assert row.queries == 40 and row.cases == len(set(cases)) and row.k == 5
    # without cases only the image itself is excluded
    alone = es.knn_purity(emb, levels, None, k=5, n_boot=10)
    purity, chance = _ref_purity(emb, levels["label"], np.arange(40), 5)
    assert alone.loc[alone["level"] == "label", "purity"].item() == pytest.approx(purity)
    assert alone.loc[alone["level"] == "label", "chance"].item() == pytest.approx(chance)


def test_purity_on_a_query_sample_and_duplicated_cases():
    emb, levels, cases = _data(seed=1)
    emb = np.vstack([emb, emb[:5] + 1e-4])  # near-copies in the same case must not count as neighbours
    cases = np.append(cases, cases[:5])
    levels = {k: np.append(v, v[:5]) for k, v in levels.items()}
    table = es.knn_purity(emb, levels, cases, k=4, max_queries=20, seed=3, n_boot=20)
    rows = es.sample_rows(len(emb), 20, seed=3)
    for row in table.itertuples():
        hits = []
        for i in rows:
            others = [j for j in range(len(emb)) if cases[j] != cases[i]]
            nearest = sorted(others, key=lambda j, i=i: -_cos(emb[i], emb[j]))[:4]
            hits.append(np.mean([levels[row.level][j] == levels[row.level][i] for j in nearest]))
        assert row.purity == pytest.approx(np.mean(hits)) and row.queries == 20


def test_silhouette_matches_a_loop():
    emb, levels, cases = _data(seed=2, n=25)
    table = es.silhouettes(emb, levels, max_points=None)
    for row in table.itertuples():
        lab = levels[row.level]
        values = []
        for i in range(len(emb)):
            dist = {
                c: [1 - _cos(emb[i], emb[j]) for j in range(len(emb)) if lab[j] == c and j != i]
                for c in set(lab)
            }
            if not dist[lab[i]]:
                values.append(0.0)  # a class of one image: silhouette 0 (the usual convention)
                continue
            a = np.mean(dist[lab[i]])
            b = min(np.mean(d) for c, d in dist.items() if c != lab[i])
            values.append((b - a) / max(a, b))
        assert row.silhouette == pytest.approx(np.mean(values), abs=1e-9)


def test_embedding_space_table_has_purity_chance_and_silhouette():
    emb, levels, cases = _data(seed=3)
    table = es.embedding_space_table(emb, levels, cases, k=3, max_points=None, n_boot=20)
    assert list(table["level"]) == ["modality", "region", "label"]
    assert {"purity", "ci_low", "ci_high", "chance", "silhouette", "cases"} <= set(table.columns)
    with pytest.raises(es.EmbeddingSpaceError, match="label"):
        es.knn_purity(emb, {"label": levels["label"][:-1]}, cases)


def test_umap_frame_uses_the_same_rows_for_every_model(monkeypatch):
    # UMAP itself (numba, a minute to compile here) is run by the report test; this checks the bookkeeping
    calls = []
    monkeypatch.setattr(es, "umap_2d", lambda x, seed, n_neighbors: calls.append(x) or x[:, :2] * 1.0)
    emb, levels, cases = _data(seed=4, n=30)
    frame = es.umap_frame({"a": emb, "b": emb[:, ::-1].copy()}, levels, max_points=20, seed=1, n_neighbors=5)
    assert list(frame.columns) == ["model", "row", "x", "y", "modality", "region", "label"]
    rows_a, rows_b = (frame.loc[frame["model"] == m, "row"].to_numpy() for m in ("a", "b"))
    assert len(rows_a) == 20 and np.array_equal(rows_a, rows_b)
    assert np.array_equal(frame.loc[frame["model"] == "a", "label"], levels["label"][rows_a])
    assert np.allclose(calls[1], emb[rows_a][:, ::-1]) and np.allclose(frame["x"].iloc[:20], emb[rows_a, 0])
    with pytest.raises(es.EmbeddingSpaceError, match="different numbers of rows"):
        es.umap_frame({"a": emb, "b": emb[:-1]}, levels)


def test_figures_keep_a_key_on_every_panel_and_group_rare_classes():
    rng = np.random.default_rng(0)
    n = 300
    labels = np.array([f"class{int(v):02d}" for v in rng.zipf(1.5, n) % 40])
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "model": m,
                    "x": rng.normal(size=n),
                    "y": rng.normal(size=n),
                    "label": labels,
                    "modality": np.where(labels < "class05", "CT", "MR"),
                }
            )
            for m in ("a", "b")
        ]  # fmt: skip
    )
    fig = plots.umap_grid(frame, levels=("modality", "label"), top=6)
    n_classes = len(set(labels))
    for ax in fig.axes:
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        if ax.get_title().endswith("label"):
            assert (
                len(texts) == 7
                and f"other: {n_classes - 6} less frequent (of {n_classes} in the sample)" in texts
            )
            colours = [h.get_facecolor()[0][:3] for h in ax.get_legend().legend_handles[1:]]
            assert all(
                max(c) - min(c) > 0.05 or max(c) < 0.1 for c in colours
            )  # no grey like "other" (black is)
        else:
            assert sorted(texts) == ["CT", "MR"]
    table = pd.DataFrame(
        {
            "model": ["a"] * 3 + ["b"] * 3,
            "level": ["modality", "region", "label"] * 2,
            "purity": 0.5,
            "ci_low": 0.4,
            "ci_high": 0.6,
            "chance": [0.3, 0.2, 0.1] * 2,
        }  # fmt: skip
    )
    fig = plots.level_scores(table, "purity", "ci_low", "ci_high", "chance")
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts.count("chance") == 1 and {"a", "b"} <= set(texts)
    segments = [c for c in fig.axes[0].collections if c.get_label() == "chance"]
    assert segments and sorted({round(s[0][1], 6) for s in segments[0].get_segments()}) == [0.1, 0.2, 0.3]
    curves = pd.DataFrame({"model": "a", "epoch": [1, 2, 3], "train_loss": [1.0, 0.8, 0.7],
                           "selection_loss": [1.1, 1.0, 1.05], "selection_accuracy": [0.3, 0.5, 0.5]})  # fmt: skip
    fig = plots.learning_curves(curves, {"a": 2})
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "chosen epoch 2" in texts and "selection accuracy" in texts
