"""kNN classification through the config's search index (`knn_classify(index_type=..., index_params=...)`),
checked against the default exact run and a slow loop on small seeded data."""

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
from cbmir.analyses import classify
from classify_data import knn_data, ref_neighbours, ref_vote

# Indexes that are exact on a few dozen rows: every inverted list probed, or a graph searched with ef >= N,
# or PQ candidates that cover the whole index re-ranked exactly.
EXACT_ON_SMALL = [
    ("ivf", {"nlist": 4, "nprobe": 4}),
    ("hnsw", {"m": 16, "ef_construction": 200, "ef_search": 512}),
    ("ivfpq", {"nlist": 2, "nprobe": 2, "k_factor": 64}),
]


def _ref_val_outcome(x, labels, splits, cases, k_max):
    """(k, test scores [Q, C]) of the val rule by a loop: smallest k with the best val accuracy (= micro-F1)."""
    classes, y = np.unique(labels, return_inverse=True)
    tr, va, te = (np.flatnonzero(splits == s) for s in ("train", "val", "test"))
    nb = ref_neighbours(x[tr], x[va], k_max, cases[tr], cases[va])
    acc = [
        np.mean([ref_vote(list(y[tr][row[:k]])) == y[va][i] for i, row in enumerate(nb)])
        for k in range(1, k_max + 1)
    ]
    k = int(np.argmax(acc)) + 1
    nb = ref_neighbours(x[tr], x[te], k, cases[tr], cases[te])
    return k, np.array([[np.mean(y[tr][row] == c) for c in range(len(classes))] for row in nb])


def _same(a: classify.Outcome, b: classify.Outcome) -> None:
    assert (a.rule, a.reason, a.setting) == (b.rule, b.reason, b.setting)
    assert a.curve.equals(b.curve)
    np.testing.assert_array_equal(a.test_scores, b.test_scores)
    assert a.result.metrics == b.result.metrics


@pytest.mark.parametrize("selection", ["val", "grouped-cv"])
def test_flat_given_explicitly_is_the_default(selection):
    x, labels, splits, cases = knn_data(seed=1, n_cases=40, spread=2.0)
    default = classify.knn_classify(x, labels, splits, cases, selection=selection, k_max=10, n_splits=3)
    flat = classify.knn_classify(
        x,
        labels,
        splits,
        cases,
        selection=selection,
        k_max=10,
        n_splits=3,
        index_type="flat",
        index_params={},
    )
    _same(flat, default)


@pytest.mark.parametrize(("index_type", "params"), EXACT_ON_SMALL)
def test_an_approximate_index_that_is_exact_here_gives_the_exact_outcome(index_type, params):
    x, labels, splits, cases = knn_data(seed=4, n_cases=40, spread=2.0)
    cases = cases.copy()
    cases[np.flatnonzero(splits == "test")[:3]] = cases[
        np.flatnonzero(splits == "train")[0]
    ]  # leaked patient
    k_ref, scores_ref = _ref_val_outcome(x, labels, splits, cases, k_max=12)
    exact = classify.knn_classify(x, labels, splits, cases, selection="val", k_max=12)
    approx = classify.knn_classify(
        x, labels, splits, cases, selection="val", k_max=12, index_type=index_type, index_params=params
    )
    assert exact.setting["k"] == k_ref and np.allclose(exact.test_scores, scores_ref)
    assert approx.setting == exact.setting
    np.testing.assert_allclose(approx.test_scores, scores_ref)
    np.testing.assert_allclose(approx.curve[["f1_micro", "f1_macro"]], exact.curve[["f1_micro", "f1_macro"]])
    grouped = [
        classify.knn_classify(x, labels, splits, cases, selection="grouped-cv", k_max=12, n_splits=3, **kw)
        for kw in ({}, {"index_type": index_type, "index_params": params})
    ]
    assert grouped[1].setting == grouped[0].setting
    np.testing.assert_allclose(grouped[1].test_scores, grouped[0].test_scores)
    np.testing.assert_allclose(
        grouped[1].curve[["f1_micro", "f1_macro"]], grouped[0].curve[["f1_micro", "f1_macro"]]
    )


@pytest.mark.parametrize(("selection", "n_searches"), [("val", 2), ("grouped-cv", 3 + 1)])
def test_every_knn_search_gets_the_index_and_the_own_case_exclusion(monkeypatch, selection, n_searches):
    x, labels, splits, cases = knn_data(seed=2, n_cases=40, spread=2.0)
    calls = []
    real = classify.search

    def spy(xb, xq, k, **kwargs):
        calls.append(kwargs)
        return real(xb, xq, k, **kwargs)

    monkeypatch.setattr(classify, "search", spy)
    classify.knn_classify(
        x, labels, splits, cases, selection=selection, k_max=6, n_splits=3,
        index_type="ivf", index_params={"nlist": 2, "nprobe": 2},
    )  # fmt: skip
    assert len(calls) == n_searches
    assert all(c["index_type"] == "ivf" and c["nlist"] == 2 and c["nprobe"] == 2 for c in calls)
    # val and test searches drop the query's own case; the grouped folds are case-disjoint by construction
    with_cases = [c for c in calls if "index_cases" in c]
    assert len(with_cases) == (2 if selection == "val" else 1)


def test_an_inexact_index_changes_the_search_so_the_setting_is_used():
    # one of 16 lists probed on random data: some test neighbours must differ from the exact ones
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 8))
    labels = np.array([f"c{i % 4}" for i in range(n)])
    splits = np.array(["train"] * 300 + ["val"] * 50 + ["test"] * 50)
    exact = classify.knn_classify(x, labels, splits, selection="val", k_max=5)
    approx = classify.knn_classify(
        x, labels, splits, selection="val", k_max=5, index_type="ivf", index_params={"nlist": 16, "nprobe": 1}
    )
    assert not (approx.curve.equals(exact.curve) and np.array_equal(approx.test_scores, exact.test_scores))


def test_bad_index_settings_raise_the_search_error_naming_the_parameter():
    x, labels, splits, cases = knn_data(n_cases=40, spread=2.0)
    with pytest.raises(ValueError, match="parameter 'index_type' is 'annoy'"):
        classify.knn_classify(x, labels, splits, cases, index_type="annoy")
    with pytest.raises(ValueError, match=r"index_type 'ivf' has no parameter\(s\) \['n_probe'\]"):
        classify.knn_classify(x, labels, splits, cases, index_type="ivf", index_params={"n_probe": 4})
    with pytest.raises(ValueError, match="parameter 'index_type'"):
        classify.index_sentence("annoy")


def test_index_sentence_names_the_index_and_its_parameters():
    assert "exact" in classify.index_sentence() and "`flat`" in classify.index_sentence("flat", {})
    text = classify.index_sentence("ivfpq", {"nprobe": 192})
    assert "approximate" in text and "`ivfpq`" in text and "nprobe = 192" in text
    assert "defaults" in classify.index_sentence("hnsw")


@pytest.mark.parametrize(("selection", "n_builds"), [("val", 1), ("grouped-cv", 3 + 1)])
def test_the_val_rule_builds_the_train_index_once_and_keeps_the_outcome(monkeypatch, selection, n_builds):
    """k selection on val and the test search run against the same train rows: one index serves both (the
    grouped folds each have their own index rows). Reusing it changes nothing in the outcome."""
    from cbmir import search as search_module

    x, labels, splits, cases = knn_data(seed=2, n_cases=40, spread=2.0)
    settings = dict(
        selection=selection, k_max=6, n_splits=3, index_type="ivf", index_params={"nlist": 2, "nprobe": 1}
    )
    built = []
    real = search_module.build_index
    monkeypatch.setattr(
        search_module, "build_index", lambda xb, t, **p: built.append(len(xb)) or real(xb, t, **p)
    )
    reused = classify.knn_classify(x, labels, splits, cases, **settings)
    assert len(built) == n_builds
    assert search_module._REUSE is None  # nothing is kept after the call
    monkeypatch.setattr(classify, "reuse_index", contextlib.nullcontext)
    built.clear()
    fresh = classify.knn_classify(x, labels, splits, cases, **settings)
    assert len(built) == (2 if selection == "val" else n_builds)
    _same(reused, fresh)


def test_reuse_index_rebuilds_for_other_vectors_or_settings_and_only_inside_the_block(monkeypatch):
    from cbmir import search as search_module

    rng = np.random.default_rng(0)
    xb, xq = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(5, 8)).astype(np.float32)
    built = []
    real = search_module.build_index
    monkeypatch.setattr(search_module, "build_index", lambda b, t, **p: built.append(t) or real(b, t, **p))
    ivf = {"index_type": "ivf", "nlist": 2, "nprobe": 2}
    plain = search_module.search(xb, xq, 3, progress=False, **ivf)
    with search_module.reuse_index():
        first = search_module.search(xb, xq, 3, progress=False, **ivf)
        again = search_module.search(xb.copy(), xq[:2], 3, progress=False, **ivf)  # equal content: reused
        assert built == ["ivf", "ivf"]
        search_module.search(xb + 1.0, xq, 3, progress=False, **ivf)  # other vectors: rebuilt
        search_module.search(xb, xq, 3, progress=False, index_type="ivf", nlist=3, nprobe=3)  # other settings
        assert built == ["ivf", "ivf", "ivf", "ivf"]
    search_module.search(xb, xq, 3, progress=False, **ivf)
    assert len(built) == 5 and search_module._REUSE is None
    np.testing.assert_array_equal(first[1], plain[1])
    np.testing.assert_array_equal(again[1], plain[1][:2])
    search_module.search(xb, xq, 3, progress=False)  # flat: scanned in blocks, no index built
    assert len(built) == 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_both_heads_release_a_memmapped_inputs_pages(tmp_path) -> None:
    """At 1.6 M x 768 the mapped store (4.9 GB) stayed resident beside the heads' own copies (07 peaked at 16.5 GiB)."""
    from cbmir.store import EmbeddingStore, write_store

    rng = np.random.default_rng(0)
    n = 16_384
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, 512)) + 3 * np.eye(4, 512)[y]
    store = EmbeddingStore.open(
        write_store(tmp_path / "s", x, [f"{i}.png" for i in range(n)], spec="toy").path
    )
    labels, splits = np.array(list("abcd"))[y], rng.choice(["train", "val", "test"], n, p=[0.8, 0.1, 0.1])

    def rss_file_kib() -> int:
        line = next(s for s in Path("/proc/self/status").read_text().splitlines() if s.startswith("RssFile:"))
        return int(line.split()[1])

    warm = np.array(
        store.embeddings[:2000]
    )  # load faiss's and torch's libraries (file-backed pages too) first
    classify.knn_classify(warm, labels[:2000], splits[:2000], selection="val", k_max=5)
    classify.probe_classify(warm, labels[:2000], splits[:2000], selection="val", max_epochs=1, progress=False)
    before = rss_file_kib()
    classify.knn_classify(store.embeddings, labels, splits, selection="val", k_max=5)
    assert rss_file_kib() - before < 0.1 * store.embeddings.nbytes / 1024
    classify.probe_classify(store.embeddings, labels, splits, selection="val", max_epochs=1, progress=False)
    assert rss_file_kib() - before < 0.1 * store.embeddings.nbytes / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_standardising_a_memmap_in_chunks_keeps_few_of_its_pages(tmp_path) -> None:
    """The probe's standardiser passes over 1.6 M x 1000 mapped vectors (6.4 GB): with `release`, at most about
    one chunk stays resident; without it, all of them (the check can fail)."""
    from cbmir.store import EmbeddingStore, write_store

    n, dim, chunk = 32_768, 256, 1024
    x = np.random.default_rng(1).normal(size=(n, dim))
    mm = EmbeddingStore.open(write_store(tmp_path / "s", x, [f"{i}.png" for i in range(n)], spec="toy").path)
    matrix = mm.embeddings

    def rss_file_kib() -> int:
        line = next(s for s in Path("/proc/self/status").read_text().splitlines() if s.startswith("RssFile:"))
        return int(line.split()[1])

    classify.release_pages(matrix)
    before = rss_file_kib()
    mean, scale = classify.fit_standardiser(matrix, chunk_rows=chunk, release=matrix)
    z = classify.standardise(matrix, mean, scale, chunk_rows=chunk, release=matrix)
    assert rss_file_kib() - before < 0.1 * matrix.nbytes / 1024
    np.testing.assert_allclose(z, ((matrix - matrix.mean(0)) / matrix.std(0)).astype(np.float32), atol=1e-4)
    classify.release_pages(matrix)
    before = rss_file_kib()
    classify.standardise(matrix, mean, scale, chunk_rows=chunk)  # no release: the whole map is resident
    assert rss_file_kib() - before > 0.9 * matrix.nbytes / 1024
