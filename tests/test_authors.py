"""`cbmir.authors`: the authors' published artefacts (their exact layout, written here) imported into cbmir files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from cbmir import authors
from cbmir.authors import AuthorsImportError, import_authors, read_reference
from cbmir.cli import main
from cbmir.errors import CbmirError
from cbmir.manifest import row_labels
from cbmir.metrics.retrieval import label_matrices, micro_macro, precision_at_n
from cbmir.search import Neighbours
from cbmir.store import EmbeddingStore, is_complete

LABELS = ["XR/chest/Normal", "XR/chest/Pneumonia", "CT/abdomen/Liver", "MR/knee/ACL"]
DATASETS = ("nih14", "radiology_ai")
K = 12


def _manifest() -> pd.DataFrame:
    rows = []
    for i in range(60):
        dataset = DATASETS[i % 2]
        # unequal classes: Liver and ACL have 3 train images each, so min(N, n_c) matters from N = 4
        label = LABELS[0] if dataset == "nih14" else LABELS[{9: 2, 11: 3}.get(i % 12, 1)]
        split = ("train", "train", "train", "val", "test")[(i // 2) % 5]
        folder = "images" if dataset == "nih14" else f"{label}"
        row = {
            "filepath": f"{dataset}/{folder}/img_{i:03d}.png",
            "dataset": dataset,
            "split": split,
            "modality": label.split("/")[0],
            "anatomic_region": label.split("/")[1],
        }
        row.update({name: 1.0 if name == label else 0.0 for name in LABELS})  # the authors write 0.0 / 1.0
        rows.append(row)
    return pd.DataFrame(rows)


def _paper_precision(knn: pd.DataFrame, labels: dict[str, str], counts: dict[str, int], n: int) -> tuple:
    """The paper's definition, one query at a time: micro/macro mean and std of modified P@N over test queries."""
    per_query, classes = [], []
    for _, row in knn.iterrows():
        label = labels[row["query"]]
        m = min(n, counts[label])
        hits = sum(labels[row[str(j)]] == label for j in range(1, m + 1))
        per_query.append(hits / m)
        classes.append(label)
    frame = pd.DataFrame({"p": per_query, "c": classes})
    grouped = frame.groupby("c")["p"]
    return frame["p"].mean(), frame["p"].std(), grouped.mean().mean(), grouped.std().mean()


@pytest.fixture
def published(tmp_path):
    """Artefacts in the authors' layout: split CSVs, nested-group HDF5 per model and dataset, knn.csv, tables."""
    rng = np.random.default_rng(0)
    root = tmp_path / "zenodo"
    manifest = _manifest()
    exp = root / "experiments" / "chexpert_mimic_nih14_radimagenet"
    exp.mkdir(parents=True)
    for split in ("train", "val", "test"):
        manifest[manifest["split"] == split].to_csv(exp / f"{split}.csv", index=False)
    ordered = pd.concat(
        [manifest[manifest["split"] == s] for s in ("train", "val", "test")], ignore_index=True
    )
    vectors = {}
    for model, dim in (("SAMViTB", 8), ("ViTMAEB", 6)):
        vecs = rng.normal(size=(len(ordered), dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        vectors[model] = vecs
        (root / "embeddings" / model).mkdir(parents=True)
        for dataset in DATASETS:
            with h5py.File(root / "embeddings" / model / f"{dataset}.h5", "w") as handle:
                for i in np.flatnonzero(ordered["dataset"] == dataset):
                    if model == "ViTMAEB" and i == 5:
                        continue  # one image the authors did not embed
                    handle.create_dataset(ordered["filepath"][i], data=vecs[i])
    # knn.csv of SAMViTB: test then val queries, K neighbours among train, by inner product
    train = np.flatnonzero(ordered["split"] == "train")
    queries = np.concatenate([np.flatnonzero(ordered["split"] == s) for s in ("test", "val")])
    sims = vectors["SAMViTB"][queries] @ vectors["SAMViTB"][train].T
    order = train[np.argsort(-sims, axis=1, kind="stable")[:, :K]]
    paths = ordered["filepath"].to_numpy()
    knn = pd.DataFrame({"query": paths[queries], **{str(j + 1): paths[order[:, j]] for j in range(K)}})
    model_dir = exp / "SAMViTB"
    model_dir.mkdir()
    knn.to_csv(model_dir / "knn.csv", index=False)
    labels = dict(zip(paths, ordered[LABELS].idxmax(axis=1), strict=True))
    counts = ordered.loc[train, LABELS].sum().astype(int).to_dict()
    test_knn = knn[knn["query"].isin(set(paths[ordered["split"] == "test"]))]
    rows = [_paper_precision(test_knn, labels, counts, n) for n in range(1, K)]
    retrieval = pd.DataFrame(
        rows,
        columns=[
            "micro_precision_mean",
            "micro_precision_std",
            "macro_precision_mean",
            "macro_precision_std",
        ],
    )
    retrieval.to_csv(model_dir / "retrieval.csv")  # with the index column, as the authors write it
    pd.DataFrame([{"micro_f1": 0.5, "macro_f1": 0.25}]).to_csv(
        model_dir / "knn_classification.csv", index=False
    )
    pd.DataFrame([{"micro_roc_auc": 0.9, "macro_accuracy": 0.7}]).to_csv(
        model_dir / "linear_probing.csv", index=False
    )
    (model_dir / "config.json").write_text(json.dumps({"knn_csv": "/their/machine/knn.csv"}))
    return {"root": root, "manifest": ordered, "vectors": vectors, "knn": knn, "retrieval": retrieval}


@pytest.mark.parametrize("block", [authors.PUT_BLOCK, 4])  # 4: many blocks and a short last one per file
def test_import_row_by_row(published, tmp_path, monkeypatch, block):
    monkeypatch.setattr(authors, "PUT_BLOCK", block)
    out = tmp_path / "work"
    report = import_authors(published["root"], out, progress=False)
    assert set(report) == {"sam-vit-b", "vit-mae-b-paper"}
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest["filepath"]) == list(published["manifest"]["filepath"])
    sam = EmbeddingStore.open(out / "embeddings" / "sam-vit-b")
    assert sam.provenance["source"] == "imported from the authors' published embeddings"
    assert sam.provenance["preset"] == "sam-vit-b" and sam.provenance["spec"] == "sam-vit-b"
    assert set(sam.provenance["files"]) == {"nih14.h5", "radiology_ai.h5"}
    assert all(len(v["sha256"]) == 64 for v in sam.provenance["files"].values())
    assert list(sam.ids) == list(manifest["filepath"]) and sam.failed.empty
    for i, path in enumerate(manifest["filepath"]):
        np.testing.assert_allclose(
            sam.embeddings[sam.rows_for([path])[0]], published["vectors"]["SAMViTB"][i], atol=1e-6
        )
    mae = EmbeddingStore.open(out / "embeddings" / "vit-mae-b-paper")
    missing = manifest["filepath"][5]
    assert missing not in set(mae.ids) and len(mae) == len(manifest) - 1
    assert mae.failed.to_dict("records") == [
        {"filepath": missing, "error": f"not in {manifest['dataset'][5]}.h5"}
    ]
    for i, path in enumerate(manifest["filepath"]):
        if i != 5:
            np.testing.assert_allclose(
                mae.embeddings[mae.rows_for([path])[0]], published["vectors"]["ViTMAEB"][i], atol=1e-6
            )
    nb = Neighbours.load(out / "neighbours" / "sam-vit-b--authors-knn.npz")
    knn = published["knn"]
    lookup = {p: r for r, p in enumerate(manifest["filepath"])}
    assert nb.k == K and list(nb.query_rows) == [lookup[p] for p in knn["query"]]
    for q, row in knn.iterrows():
        assert list(nb.ids[q]) == [lookup[row[str(j)]] for j in range(1, K + 1)]
    assert list(nb.index_rows) == list(np.flatnonzero(manifest["split"] == "train"))


def test_reference_tables_read(published, tmp_path):
    out = tmp_path / "work"
    import_authors(published["root"], out, progress=False)
    ref = out / "reference" / "sam-vit-b.csv"
    retrieval = read_reference(ref, "retrieval")
    assert list(retrieval["N"]) == list(range(1, K))
    expected = published["retrieval"]
    for column in expected.columns:
        np.testing.assert_allclose(retrieval[column], expected[column], rtol=0, atol=1e-15)
    assert read_reference(ref, "knn_classification").to_dict("records") == [
        {"macro_f1": 0.25, "micro_f1": 0.5}
    ]
    assert read_reference(ref, "linear_probing").to_dict("records") == [
        {"macro_accuracy": 0.7, "micro_roc_auc": 0.9}
    ]
    assert not (out / "reference" / "vit-mae-b-paper.csv").exists()


def test_our_metric_reproduces_their_retrieval_csv(published, tmp_path):
    out = tmp_path / "work"
    import_authors(published["root"], out, progress=False)
    manifest = pd.read_csv(out / "manifest.csv")
    nb = Neighbours.load(out / "neighbours" / "sam-vit-b--authors-knn.npz")
    test = np.isin(nb.query_rows, np.flatnonzero(manifest["split"] == "test"))
    nb = Neighbours(nb.query_rows[test], nb.ids[test], nb.scores[test], nb.index_rows)
    labels, q, counts, _ = label_matrices(nb, row_labels(manifest), max_n=K - 1)
    micro, macro = micro_macro(precision_at_n(labels, q, counts), q)
    theirs = read_reference(out / "reference" / "sam-vit-b.csv", "retrieval")
    np.testing.assert_allclose(micro, theirs["micro_precision_mean"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(macro, theirs["macro_precision_mean"], rtol=0, atol=1e-9)
    assert np.ptp(micro) > 0  # the check is not vacuous: precision varies with N
    assert counts[np.unique(q)].min() < K - 1  # a queried class smaller than N: min(N, n_c) is exercised


def test_second_run_skips_finished_models(published, tmp_path, monkeypatch):
    out = tmp_path / "work"
    import_authors(published["root"], out, progress=False)
    before = (out / "embeddings" / "sam-vit-b" / "provenance.json").read_text()
    monkeypatch.setattr(authors, "_import_h5", lambda *a, **k: pytest.fail("a finished model was re-read"))
    table = out / "neighbours" / "sam-vit-b--authors-knn.npz"
    stamp = table.stat().st_mtime_ns
    monkeypatch.setattr(authors, "read_knn", lambda *a, **k: pytest.fail("an imported knn.csv was re-read"))
    import_authors(published["root"], out, progress=False)
    assert (out / "embeddings" / "sam-vit-b" / "provenance.json").read_text() == before
    assert table.stat().st_mtime_ns == stamp


def test_a_changed_knn_csv_is_imported_again(published, tmp_path):
    out = tmp_path / "work"
    import_authors(published["root"], out, progress=False)
    path = published["root"] / "experiments" / "chexpert_mimic_nih14_radimagenet" / "SAMViTB" / "knn.csv"
    knn = pd.read_csv(path)
    knn[["1", "2"]] = knn[["2", "1"]].to_numpy()
    knn.to_csv(path, index=False)
    import_authors(published["root"], out, progress=False)
    nb = Neighbours.load(out / "neighbours" / "sam-vit-b--authors-knn.npz")
    lookup = {p: r for r, p in enumerate(published["manifest"]["filepath"])}
    assert list(nb.ids[:, 0]) == [lookup[p] for p in knn["1"]]


def test_killed_import_resumes_from_the_last_finished_file(published, tmp_path, monkeypatch):
    out = tmp_path / "work"
    real = authors._import_h5
    seen = []

    def crash_on_second(path, *args, **kwargs):
        if seen:
            raise KeyboardInterrupt  # killed while reading the second file
        seen.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(authors, "_import_h5", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        import_authors(published["root"], out, progress=False)
    state = json.loads((out / ".import" / "sam-vit-b" / "state.json").read_text())
    assert list(state["done"]) == seen
    resumed = []

    def record(path, *args, **kwargs):
        resumed.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(authors, "_import_h5", record)
    import_authors(published["root"], out, progress=False)
    assert seen == ["nih14.h5"]  # SAMViTB's first file finished before the kill, and is not read again:
    assert resumed == ["radiology_ai.h5", "nih14.h5", "radiology_ai.h5"]
    sam = EmbeddingStore.open(out / "embeddings" / "sam-vit-b")
    manifest = published["manifest"]
    assert sam.failed.empty and len(sam) == len(manifest)
    for i, path in enumerate(manifest["filepath"]):
        np.testing.assert_allclose(
            sam.embeddings[sam.rows_for([path])[0]], published["vectors"]["SAMViTB"][i], atol=1e-6
        )
    assert not (out / ".import" / "sam-vit-b").exists()


def test_zero_and_non_finite_vectors_are_listed_and_the_rest_imported(published, tmp_path, monkeypatch):
    monkeypatch.setattr(authors, "PUT_BLOCK", 3)
    manifest = published["manifest"]
    nih = np.flatnonzero(manifest["dataset"] == "nih14")
    bad = {manifest["filepath"][nih[1]]: np.zeros(8), manifest["filepath"][nih[4]]: np.full(8, np.nan)}
    with h5py.File(published["root"] / "embeddings" / "SAMViTB" / "nih14.h5", "a") as handle:
        for key, vec in bad.items():
            handle[key][...] = vec
    out = tmp_path / "work"
    import_authors(published["root"], out, progress=False)
    sam = EmbeddingStore.open(out / "embeddings" / "sam-vit-b")
    assert sorted(sam.failed["filepath"]) == sorted(bad)
    assert set(sam.failed["error"]) == {"vector in nih14.h5 is not finite or all zeros"}
    for i, path in enumerate(manifest["filepath"]):
        if path not in bad:
            np.testing.assert_allclose(
                sam.embeddings[sam.rows_for([path])[0]], published["vectors"]["SAMViTB"][i], atol=1e-6
            )


def test_truncated_hdf5_names_the_file(published, tmp_path):
    path = published["root"] / "embeddings" / "SAMViTB" / "nih14.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AuthorsImportError, match=r"nih14\.h5.*(truncated|damaged)") as err:
        import_authors(published["root"], tmp_path / "work", progress=False)
    assert isinstance(err.value, CbmirError) and "SAMViTB" in str(err.value)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_damaged_model_does_not_stop_the_others(published, tmp_path, jobs):
    path = published["root"] / "embeddings" / "SAMViTB" / "nih14.h5"  # sorted first: imported before ViTMAEB
    path.write_bytes(path.read_bytes()[:100])
    out = tmp_path / "work"
    with pytest.raises(AuthorsImportError, match=r"SAMViTB.*nih14\.h5"):
        import_authors(published["root"], out, progress=False, jobs=jobs)
    assert is_complete(out / "embeddings" / "vit-mae-b-paper")  # the other model was finished
    assert not (out / "embeddings" / "sam-vit-b").exists()


def test_parallel_import_writes_what_the_serial_one_does(published, tmp_path):
    serial = import_authors(published["root"], tmp_path / "one", progress=False)
    parallel = import_authors(published["root"], tmp_path / "two", progress=False, jobs=2)
    assert list(parallel) == list(serial)
    for preset in serial:
        a, b = (EmbeddingStore.open(tmp_path / w / "embeddings" / preset) for w in ("one", "two"))
        assert list(a.ids) == list(b.ids)
        np.testing.assert_array_equal(np.asarray(a.embeddings), np.asarray(b.embeddings))
        assert a.failed.equals(b.failed)
    one = Neighbours.load(tmp_path / "one" / "neighbours" / "sam-vit-b--authors-knn.npz")
    two = Neighbours.load(tmp_path / "two" / "neighbours" / "sam-vit-b--authors-knn.npz")
    np.testing.assert_array_equal(one.ids, two.ids)
    with pytest.raises(ValueError, match="jobs"):
        import_authors(published["root"], tmp_path / "three", progress=False, jobs=0)


def test_dimension_mismatch_across_files_names_file_and_key(published, tmp_path):
    path = published["root"] / "embeddings" / "ViTMAEB" / "radiology_ai.h5"
    manifest = published["manifest"]
    key = manifest["filepath"][np.flatnonzero(manifest["dataset"] == "radiology_ai")[0]]
    with h5py.File(path, "r+") as handle:
        del handle[key]
        handle.create_dataset(key, data=np.ones(7, dtype=np.float32))
    with pytest.raises(AuthorsImportError, match="dimension 7") as err:
        import_authors(published["root"], tmp_path / "work", progress=False)
    assert str(path) in str(err.value) and key in str(err.value) and "nih14.h5" in str(err.value)


def test_knn_naming_an_unknown_image_names_file_row_and_value(published, tmp_path):
    path = published["root"] / "experiments" / "chexpert_mimic_nih14_radimagenet" / "SAMViTB" / "knn.csv"
    knn = pd.read_csv(path)
    knn.loc[3, "4"] = "nih14/images/not_there.png"
    knn.to_csv(path, index=False)
    out = tmp_path / "work"
    with pytest.raises(AuthorsImportError) as err:
        import_authors(published["root"], out, progress=False)
    message = str(err.value)
    assert str(path) in message and "row 4" in message and "'4'" in message and "not_there.png" in message
    # what was imported before the error stays
    assert EmbeddingStore.open(out / "embeddings" / "sam-vit-b").failed.empty


def test_knn_read_in_small_blocks_names_the_right_row(published, tmp_path, monkeypatch):
    path = published["root"] / "experiments" / "chexpert_mimic_nih14_radimagenet" / "SAMViTB" / "knn.csv"
    manifest = published["manifest"]
    train = np.flatnonzero(manifest["split"] == "train")
    monkeypatch.setattr(authors, "KNN_BLOCK_BYTES", 2048)  # a few rows per block
    whole = authors.read_knn(path, manifest["filepath"].to_numpy(), train)
    lookup = {p: r for r, p in enumerate(manifest["filepath"])}
    knn = published["knn"]
    assert len(knn) > 20 and list(whole.query_rows) == [lookup[p] for p in knn["query"]]
    assert [list(r) for r in whole.ids] == [
        [lookup[p] for p in row[1:]] for row in knn.itertuples(index=False)
    ]
    bad = knn.copy()
    bad.loc[len(knn) - 2, "2"] = "nih14/images/late.png"
    bad.to_csv(path, index=False)
    with pytest.raises(AuthorsImportError, match=rf"row {len(knn) - 1}, column '2': 'nih14/images/late.png'"):
        authors.read_knn(path, manifest["filepath"].to_numpy(), train)
    knn.to_csv(path, index=False)
    path.write_text(path.read_text() + "only,three,fields\n")
    with pytest.raises(AuthorsImportError, match=r"knn\.csv: not a readable knn\.csv"):
        authors.read_knn(path, manifest["filepath"].to_numpy(), train)


def test_missing_split_csvs_are_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuthorsImportError, match="train.csv"):
        import_authors(tmp_path / "empty", tmp_path / "work", progress=False)


def test_cli_imports_and_reports_one_line_errors(published, tmp_path, capsys):
    out = tmp_path / "work"
    assert main(["import-authors", str(published["root"]), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "SAMViTB -> sam-vit-b" in printed and "ViTMAEB -> vit-mae-b-paper" in printed
    assert main(["import-authors", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_every_authors_class_maps_to_a_real_preset():
    from cbmir.models.registry import presets

    assert set(authors.MODEL_PRESETS.values()) <= set(presets())


# ---------------------------------------------------------------- the published-artefacts route (issue 17, part 2)
def _published_context(out, tmp_path, neighbours="search", k=K):
    from types import SimpleNamespace

    from cbmir.pipeline import Context

    cfg = SimpleNamespace(work_dir=out, data_root=tmp_path / "no-images", seed=0, k=k, index_type="flat",
                          index_params={}, checkpoints={}, neighbours=neighbours, exclude_pretraining_images=False,
                          models=["sam-vit-b", "vit-mae-b-paper"])  # fmt: skip
    return Context(cfg, pd.read_csv(out / "manifest.csv"))


def test_context_takes_the_authors_neighbours_where_imported(published, tmp_path, monkeypatch):
    import cbmir.search

    out = tmp_path / "work"
    import_authors(published["root"], out, progress=False)
    ctx = _published_context(out, tmp_path, neighbours="authors")
    searched = []
    real_search_rows = cbmir.search.search_rows
    monkeypatch.setattr(
        cbmir.search, "search_rows", lambda *a, **kw: searched.append(1) or real_search_rows(*a, **kw)
    )
    knn, paths = published["knn"].set_index("query"), ctx.manifest["filepath"].to_numpy()
    for split in ("test", "val"):
        nb = ctx.neighbours("sam-vit-b", split)
        assert sorted(paths[nb.query_rows]) == sorted(
            ctx.manifest["filepath"][ctx.manifest["split"] == split]
        )
        for q, ids in zip(nb.query_rows, nb.ids, strict=True):  # row by row: their knn.csv, in their order
            assert list(paths[ids]) == list(knn.loc[paths[q], [str(j) for j in range(1, K + 1)]])
        assert np.isnan(nb.scores).all()  # knn.csv holds no similarities
        np.testing.assert_array_equal(
            np.sort(nb.index_rows), np.flatnonzero(ctx.manifest["split"] == "train")
        )
    assert not searched
    assert ctx.search_sentence(["sam-vit-b"]).startswith("the authors' published neighbour lists")
    ctx.neighbours("vit-mae-b-paper")  # no knn.csv for this model: searched with the config's index
    assert searched
    sentence = ctx.search_sentence()
    assert (
        "for sam-vit-b;" in sentence
        and "exact cosine search (FAISS" in sentence
        and "for vit-mae-b-paper" in sentence
    )


def test_context_searches_when_the_authors_neighbours_cannot_stand_in(published, tmp_path):
    out = tmp_path / "work"
    import_authors(published["root"], out, progress=False)
    with pytest.warns(UserWarning, match=f"has {K} neighbours per query, the config asks for k = {K + 1}"):
        nb = _published_context(out, tmp_path, neighbours="authors", k=K + 1).neighbours("sam-vit-b")
    assert nb.k == K + 1 and np.isfinite(nb.scores).all()
    table = Neighbours.load(out / "neighbours" / "sam-vit-b--authors-knn.npz")
    Neighbours(table.query_rows[1:], table.ids[1:], table.scores[1:], table.index_rows).save(
        out / "neighbours" / "sam-vit-b--authors-knn.npz"
    )
    ctx = _published_context(out, tmp_path, neighbours="authors")
    with pytest.warns(UserWarning, match="1 query rows are not in it"):
        nb = ctx.neighbours("sam-vit-b")
    assert np.isfinite(nb.scores).all() and ctx.neighbour_sources["sam-vit-b", "test"] == "search"
    assert ctx.search_sentence().startswith("exact cosine search")
    ctx = _published_context(out, tmp_path, neighbours="search")  # the default never reads them
    assert np.isfinite(ctx.neighbours("sam-vit-b").scores).all()


def test_context_reads_imported_stores_and_extracts_nothing(published, tmp_path, monkeypatch):
    out = tmp_path / "work"
    import_authors(published["root"], out, progress=False)
    ctx = _published_context(out, tmp_path)

    def no_extraction(*args, **kwargs):
        raise AssertionError("an imported store was re-extracted")

    monkeypatch.setattr("cbmir.extract.extract_embeddings", no_extraction)
    store = ctx.embeddings("sam-vit-b", redo=True)
    assert store.provenance["source"] == authors.SOURCE
    np.testing.assert_array_equal(
        ctx.vectors("sam-vit-b").take(np.arange(3)),
        store.embeddings[store.rows_for(ctx.manifest["filepath"][:3])],
    )
    assert not ctx.images_present()  # no images: galleries and image checks are skipped
    (tmp_path / "no-images").mkdir()
    for path in ctx.manifest["filepath"]:
        (tmp_path / "no-images" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "no-images" / path).write_bytes(b"")
    assert ctx.images_present()


def test_authors_figures_beside_ours(published, tmp_path):
    from cbmir.analyses import authors_compare

    out = tmp_path / "work"
    import_authors(published["root"], out, progress=False)
    manifest = pd.read_csv(out / "manifest.csv")
    refs = authors_compare.reference_files(out, ["sam-vit-b", "vit-mae-b-paper"])
    assert list(refs) == ["sam-vit-b"]  # only models whose tables were imported
    # ours: their own neighbours (test queries), scored by our metric; notebook 7's kNN table with one model
    nb = Neighbours.load(out / "neighbours" / "sam-vit-b--authors-knn.npz")
    test = np.isin(nb.query_rows, np.flatnonzero(manifest["split"] == "test"))
    nb = Neighbours(nb.query_rows[test], nb.ids[test], nb.scores[test], nb.index_rows)
    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame([{"model": "sam-vit-b", "f1_micro": 0.625, "f1_macro": 0.25}]).to_csv(
        tables / "07_classification-knn.csv", index=False
    )
    table = authors_compare.compare(refs, {"sam-vit-b": nb}, row_labels(manifest), tables, ns=(1, 3, 5, 10))
    retrieval = table[table["table"] == "retrieval"].set_index("metric")
    # theirs and ours against the slow per-query definition of the paper
    labels = dict(zip(manifest["filepath"], row_labels(manifest), strict=True))
    counts = manifest.loc[manifest["split"] == "train"].assign(
        l=row_labels(manifest)[manifest["split"] == "train"]
    )
    counts = counts["l"].value_counts().to_dict()
    test_knn = published["knn"][
        published["knn"]["query"].isin(set(manifest["filepath"][manifest["split"] == "test"]))
    ]
    for n in (1, 3, 5, 10):
        micro, _, macro, _ = _paper_precision(test_knn, labels, counts, n)
        assert retrieval.at[f"micro P@{n}", "ours"] == pytest.approx(micro, abs=1e-12)
        assert retrieval.at[f"macro P@{n}", "ours"] == pytest.approx(macro, abs=1e-12)
        assert retrieval.at[f"micro P@{n}", "theirs"] == pytest.approx(micro, abs=1e-12)
    assert retrieval["difference"].abs().max() < 1e-12
    knn = table[table["table"] == "knn_classification"].set_index("metric")
    assert knn.at["micro_f1", "theirs"] == 0.5 and knn.at["micro_f1", "ours"] == 0.625
    assert knn.at["micro_f1", "difference"] == pytest.approx(0.125)
    probe = table[table["table"] == "linear_probing"]
    assert probe["ours"].isna().all()  # notebook 7's probe table did not run
    text = authors_compare.sentences(table, {"sam-vit-b": True}, "flat")
    assert any(
        s.endswith("retrieval: ours equal theirs on all 8 shared metrics (within 1e-06).") for s in text
    )
    theirs = authors_compare.sentences(table, {"sam-vit-b": True}, "flat", their_lists=["sam-vit-b"])
    assert any(
        "(scored from their own neighbour lists: this checks our metric, not a search of ours)" in s
        for s in theirs
    )
    knn_text = next(s for s in text if "knn_classification" in s)
    assert "1 of 2 shared metrics differ" in knn_text and "micro_f1" in knn_text and "+0.125)" in knn_text
    assert "k-1" in knn_text and "none tested here as the cause" in knn_text
    assert any("linear_probing: the authors' figures only" in s for s in text)


def test_known_reasons_name_masking_and_logits():
    from cbmir.analyses import authors_compare

    table = pd.DataFrame(
        [("vit-mae-b", "retrieval", "micro P@1", 0.5, 0.6), ("resnet50", "retrieval", "micro P@1", 0.5, 0.4)],
        columns=authors_compare.COLUMNS[:-1],
    ).assign(difference=lambda d: d["ours"] - d["theirs"])
    mae, resnet = authors_compare.sentences(table, {}, "ivfpq")
    assert "masking" in mae and "approximate (ivfpq)" in mae and "our own extraction" in mae
    assert "logits" in resnet and "differs by design" in resnet
    mae, _ = authors_compare.sentences(table, {}, "ivfpq", their_lists=["vit-mae-b"])
    assert "their own neighbour lists" in mae and "approximate" not in mae


def test_a_tiny_difference_is_not_printed_as_zero():
    from cbmir.analyses import authors_compare

    table = pd.DataFrame(
        [("sam-vit-b", "retrieval", "micro P@1", 0.5, 0.5 + 3e-5)], columns=authors_compare.COLUMNS[:-1]
    ).assign(difference=lambda d: d["ours"] - d["theirs"])
    (text,) = authors_compare.sentences(table, {}, "flat")
    assert "theirs 0.500, ours 0.500, difference +3.0e-05" in text
