"""Cosine search against a brute-force NumPy reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cbmir.search import Neighbours, flat_knn, l2_normalise, load_store_matrix, search, search_rows


def brute_force(xb: np.ndarray, xq: np.ndarray, k: int, exclude_self: bool = False):
    """Obviously-correct reference: full similarity matrix, stable descending sort."""
    xb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    sim = xq.astype(np.float64) @ xb.T.astype(np.float64)
    if exclude_self:
        np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, order, axis=1), order


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(400, 16)).astype(np.float32), rng.normal(size=(37, 16)).astype(np.float32)


def test_flat_matches_brute_force(data):
    xb, xq = data
    scores, ids = search(xb, xq, 10, batch_size=8, progress=False)
    ref_s, ref_i = brute_force(xb, xq, 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


@pytest.mark.parametrize("block_rows", [1, 7, 64, 399, 400, 10_000])
def test_flat_knn_in_blocks_matches_brute_force_ties_included(data, block_rows):
    """Blocks of any size give the reference's ranking; equal scores (duplicated rows) rank the lower row first."""
    xb, xq = data
    xb = np.concatenate([xb, xb[:50]])  # rows 400..449 repeat rows 0..49: exact ties across blocks
    xb = l2_normalise(xb)
    xb.flags.writeable = False  # as a store's memmap is
    scores, ids = flat_knn(xb, l2_normalise(xq), 12, block_rows=block_rows)
    sim = l2_normalise(xq) @ xb.T  # float32, the same products as faiss up to rounding
    ref_s, ref_i = brute_force(xb, xq, 12)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    for q in range(
        len(xq)
    ):  # where two scores agree to rounding, either order is right; else the reference's
        for j in range(12):
            if ids[q, j] != ref_i[q, j]:
                assert abs(sim[q, ids[q, j]] - sim[q, ref_i[q, j]]) < 1e-5, (q, j)
    for q, j in zip(
        *np.nonzero(ids >= 400), strict=True
    ):  # a repeated row at an equal score: after its original
        original = np.flatnonzero(ids[q] == ids[q, j] - 400)
        if len(original) and scores[q, original[0]] == scores[q, j]:
            assert original[0] < j, (q, j)


def test_exclude_self_matches_brute_force(data):
    xb, _ = data
    scores, ids = search(xb, xb, 5, exclude_self=True, batch_size=64, progress=False)
    ref_s, ref_i = brute_force(xb, xb, 5, exclude_self=True)
    np.testing.assert_array_equal(ids, ref_i)
    assert not (ids == np.arange(len(xb))[:, None]).any()


def test_exclude_self_with_exact_duplicates():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 groups of 4 identical vectors
    _, ids = search(x, x, 3, exclude_self=True, progress=False)
    for q in range(len(x)):
        assert q not in ids[q]
        assert set(ids[q]) == set(range(4 * (q // 4), 4 * (q // 4) + 4)) - {q}


@pytest.mark.parametrize(
    ("index_type", "params", "min_recall"),
    [
        ("ivf", {"nlist": 8, "nprobe": 8}, 1.0),  # all lists probed = exact
        ("hnsw", {"m": 16, "ef_search": 200}, 0.95),
        ("ivfpq", {"nlist": 4, "nprobe": 4, "pq_m": 8, "k_factor": 10}, 0.9),
        ("ivfpq", {"nlist": 4, "nprobe": 4, "pq_m": 4, "pq_nbits": 8, "k_factor": 40}, 0.9),
    ],
)
def test_approximate_indexes_recall(data, index_type, params, min_recall):
    xb, xq = data
    _, ids = search(xb, xq, 10, index_type=index_type, progress=False, **params)
    _, ref = brute_force(xb, xq, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref, strict=True)])
    assert recall >= min_recall, recall


@pytest.mark.parametrize(("pq_nbits", "kind"), [(4, "IndexIVFPQFastScan"), (8, "IndexIVFPQ")])
def test_ivfpq_reranks_exactly(data, pq_nbits, kind):
    """4-bit codes use fast-scan lists, 8-bit classic ones; both return exact cosines of their candidates."""
    import faiss
    from cbmir.search import build_index

    xb, xq = data
    xb, xq = l2_normalise(xb), l2_normalise(xq)
    index = build_index(xb, "ivfpq", nlist=4, nprobe=2, pq_nbits=pq_nbits, k_factor=3)
    assert type(faiss.downcast_index(index.base_index)).__name__ == kind
    scores, ids = index.search(xq, 10)
    exact = np.einsum("qd,qkd->qk", xq.astype(np.float64), xb[ids].astype(np.float64))
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_ivfpq_default_sub_quantisers_divide_the_dimension():
    from cbmir.search import default_pq_m

    assert default_pq_m(512) == 256 and default_pq_m(512, 8) == 64
    assert default_pq_m(768) == 384 and default_pq_m(1024, 8) == 128
    for d in (7, 30, 197, 1280):
        assert d % default_pq_m(d) == 0 and d % default_pq_m(d, 8) == 0


def test_errors_name_the_parameter(data):
    xb, xq = data
    with pytest.raises(ValueError, match="'k' = 401"):
        search(xb, xq, 401, progress=False)
    with pytest.raises(ValueError, match="'k' = 400 .*399"):
        search(xb, xb, 400, exclude_self=True, progress=False)
    with pytest.raises(ValueError, match="'k' = 0"):
        search(xb, xq, 0, progress=False)
    bad = xq.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="'queries': row 3 has non-finite"):
        search(xb, bad, 5, progress=False)
    with pytest.raises(ValueError, match="'queries' has dimension 8"):
        search(xb, xq[:, :8], 5, progress=False)
    with pytest.raises(ValueError, match="'index_vectors' is empty"):
        search(xb[:0], xq, 5, progress=False)
    with pytest.raises(ValueError, match="'index_type'"):
        search(xb, xq, 5, index_type="lsh", progress=False)
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['nprobe'\]"):
        search(xb, xq, 5, index_type="hnsw", nprobe=3, progress=False)
    with pytest.raises(ValueError, match="'pq_nbits' = 6"):
        search(xb, xq, 5, index_type="ivfpq", pq_nbits=6, progress=False)
    with pytest.raises(ValueError, match="'k_factor' = 0"):
        search(xb, xq, 5, index_type="ivfpq", k_factor=0, progress=False)
    with pytest.raises(ValueError, match="'pq_m' = 5 must divide .* 16"):
        search(xb, xq, 5, index_type="ivfpq", pq_m=5, progress=False)
    with pytest.raises(ValueError, match="at least 16 index vectors .got 12.; use 'flat'"):
        search(xb[:12], xq, 5, index_type="ivfpq", progress=False)
    with pytest.raises(ValueError, match="all zeros"):
        l2_normalise(np.zeros((2, 3)))


def test_search_rows_maps_to_manifest_rows_and_roundtrips(tmp_path, data):
    xb, _ = data
    emb = xb[:60]
    mapping = np.arange(60)[::-1].copy()  # manifest row r has embedding row 59 - r
    index_rows = np.arange(0, 60, 2)
    query_rows = np.arange(1, 60, 2)
    nb = search_rows(emb, index_rows, query_rows, 4, embedding_rows=mapping, progress=False)
    _, ref = brute_force(emb[mapping[index_rows]], emb[mapping[query_rows]], 4)
    np.testing.assert_array_equal(nb.ids, index_rows[ref])
    np.testing.assert_array_equal(nb.query_rows, query_rows)
    nb.save(tmp_path / "nb.npz")
    back = Neighbours.load(tmp_path / "nb.npz")
    np.testing.assert_array_equal(back.ids, nb.ids)
    np.testing.assert_array_equal(back.scores, nb.scores)
    mapping[5] = -1
    with pytest.raises(ValueError, match="'query_rows': manifest row 5 has no embedding"):
        search_rows(emb, index_rows, query_rows, 4, embedding_rows=mapping, progress=False)


def test_store_vectors_map_manifest_rows_through_a_shuffled_store(tmp_path, data):
    """What `cbmir search` does: stores opened through their completeness check, rows mapped by filepath."""
    from cbmir.store import StoreError, open_stores, write_store

    xb, _ = data
    n = 30
    fps = np.array([f"img/{i}.png" for i in range(n)], dtype=object)
    order = np.random.default_rng(1).permutation(n)[:-1]  # store rows shuffled; the last image failed
    failed = pd.DataFrame({"filepath": [fps[np.setdiff1d(np.arange(n), order)[0]]], "error": "corrupt"})
    write_store(tmp_path / "store", xb[order], fps[order], spec="toy", failed=failed)
    emb, rows = load_store_matrix([tmp_path / "store"], fps)
    vectors = open_stores([tmp_path / "store"], fps)
    np.testing.assert_array_equal(rows, vectors.store_row)
    np.testing.assert_array_equal(vectors.failed_rows, np.setdiff1d(np.arange(n), order))
    for r in range(n):  # slow reference: look every filepath up by hand
        hit = [j for j, i in enumerate(order) if fps[i] == fps[r]]
        assert rows[r] == (hit[0] if hit else -1)
    index_rows, query_rows = vectors.present(np.arange(20)), vectors.present(np.arange(20, 30))
    with pytest.raises(ValueError, match="'index_rows': manifest row .* has no embedding"):
        search_rows(vectors, np.arange(30), query_rows, 3, progress=False)
    nb = search_rows(vectors, index_rows, query_rows, 3, progress=False)
    _, ref = brute_force(xb[index_rows], xb[query_rows], 3)
    np.testing.assert_array_equal(nb.ids, index_rows[ref])
    (tmp_path / "store" / "provenance.json").unlink()  # an unfinished store is never read
    with pytest.raises(StoreError, match="not a complete embedding store"):
        load_store_matrix([tmp_path / "store"], fps)


def test_train_sample_is_seeded_and_capped():
    from cbmir.search import train_sample

    x = np.arange(1000, dtype=np.float32).reshape(500, 2)
    a = train_sample(x, nlist=4, per_list=10)
    assert a.shape == (40, 2)
    np.testing.assert_array_equal(a, train_sample(x, nlist=4, per_list=10))  # same seed, same rows
    assert np.all(np.diff(a[:, 0]) > 0)  # rows kept in order, no duplicates
    assert train_sample(x, nlist=100, per_list=10) is x  # fewer rows than the cap: all of them


def test_default_nprobe_scans_about_five_percent_of_lists():
    from cbmir.search import build_index, default_nlist, default_nprobe

    assert default_nprobe(8) == 16 and default_nprobe(5060) == 253
    x = l2_normalise(np.random.default_rng(0).normal(size=(3000, 8)))
    index = build_index(x, "ivf")
    assert index.nlist == default_nlist(3000) and index.nprobe == min(16, index.nlist)


def test_l2_normalise_copies_only_when_rows_are_not_unit_length():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    unit = l2_normalise(x)
    assert unit is not x and np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-6)
    assert l2_normalise(unit) is unit  # a store's rows are already unit length: searched without a copy
    before = x.copy()
    l2_normalise(x)
    np.testing.assert_array_equal(x, before)  # the caller's array is never modified
    scaled = unit * 2
    np.testing.assert_allclose(l2_normalise(scaled), unit, atol=1e-6)


def brute_force_cases(xb, xq, k, index_cases, query_cases, exclude_self=False):
    """Slow reference, one query at a time: drop every index row of the query's case, then rank the rest."""
    out_s, out_i = [], []
    for q in range(len(xq)):
        sims = []
        for j in range(len(xb)):
            if index_cases[j] == query_cases[q] or (exclude_self and j == q):
                continue
            a, b = xq[q].astype(np.float64), xb[j].astype(np.float64)
            sims.append((-(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)), j))
        sims.sort()
        out_s.append([-s for s, _ in sims[:k]])
        out_i.append([j for _, j in sims[:k]])
    return np.array(out_s), np.array(out_i)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_case_exclusion_matches_a_per_query_reference(seed):
    rng = np.random.default_rng(seed)
    xb, xq = rng.normal(size=(120, 8)).astype(np.float32), rng.normal(size=(25, 8)).astype(np.float32)
    index_cases = rng.integers(0, 15, len(xb))  # cases of very different sizes
    index_cases[:30] = 3  # one large case
    query_cases = rng.integers(0, 20, len(xq))  # some queries share a case with the index, some do not
    query_cases[:4] = 3
    scores, ids = search(
        xb, xq, 7, index_cases=index_cases, query_cases=query_cases, batch_size=6, progress=False
    )
    ref_s, ref_i = brute_force_cases(xb, xq, 7, index_cases, query_cases)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    assert not (index_cases[ids] == query_cases[:, None]).any()


def test_same_case_exclusion_with_exclude_self_and_manifest_rows():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(80, 6)).astype(np.float32)
    cases = np.repeat(np.arange(20), 4)  # four images (slices) per patient
    rows = np.arange(0, 80)
    nb = search_rows(emb, rows, rows, 5, exclude_self=True, cases=cases, progress=False)
    _, ref = brute_force_cases(emb, emb, 5, cases, cases, exclude_self=True)
    np.testing.assert_array_equal(nb.ids, ref)
    # index and queries that share no case: the exclusion changes nothing
    index_rows, query_rows = np.arange(0, 40), np.arange(40, 80)
    with_cases = search_rows(emb, index_rows, query_rows, 5, cases=cases, progress=False)
    without = search_rows(emb, index_rows, query_rows, 5, progress=False)
    np.testing.assert_array_equal(with_cases.ids, without.ids)


def test_same_case_exclusion_errors_name_the_parameter():
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    cases = np.array([0] * 6 + [1] * 4)
    with pytest.raises(ValueError, match=r"'k' = 5 must be between 1 and 4 .*own-case"):
        search(x, x[:1], 5, index_cases=cases, query_cases=cases[:1], progress=False)
    assert search(x, x[:1], 4, index_cases=cases, query_cases=cases[:1], progress=False)[1].shape == (1, 4)
    with pytest.raises(ValueError, match="give both or neither"):
        search(x, x, 2, index_cases=cases, progress=False)
    with pytest.raises(ValueError, match="'query_cases' must hold one case per row"):
        search(x, x, 2, index_cases=cases, query_cases=cases[:3], progress=False)
    with pytest.raises(ValueError, match="'cases' must hold one case per manifest row"):
        search_rows(x, np.arange(5), np.arange(5, 10), 2, cases=cases[:4], progress=False)


def test_case_ids_from_patient_id():
    from cbmir.manifest import case_ids
    from cbmir.search import max_k

    m = pd.DataFrame({"filepath": list("abcdef"), "patient_id": ["p1", "p2", "p1", "", None, " p2 "]})
    codes = case_ids(m)
    assert codes[0] == codes[2] and codes[1] == codes[5] and codes[0] != codes[1]
    assert len(set(codes[[3, 4]]) | set(codes[[0, 1]])) == 4  # empty ids: each row its own case
    assert list(case_ids(m.drop(columns="patient_id"))) == list(range(6))
    assert max_k(6, codes, codes[[0]]) == 4 and max_k(6) == 6


def test_truncated_neighbour_table_is_refused_naming_the_file(tmp_path, data):
    from cbmir.search import NeighbourTableError

    xb, _ = data
    nb = search_rows(xb[:50], np.arange(25), np.arange(25, 50), 4, progress=False)
    path = tmp_path / "nb.npz"
    nb.save(path)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NeighbourTableError, match="nb.npz.*truncated"):
        Neighbours.load(path)
    path.write_bytes(b"")
    with pytest.raises(NeighbourTableError, match="nb.npz"):
        Neighbours.load(path)


def test_an_ivfpq_index_kept_on_disk_is_loaded_instead_of_built(tmp_path, monkeypatch):
    """The loaded index (PQ part from the file, re-ranking vectors added back) gives the built one's results;
    other vectors or settings get their own file; a damaged file is reported and rebuilt."""
    import cbmir.search as S

    rng = np.random.default_rng(0)
    xb, xq = rng.normal(size=(600, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    settings = {"index_type": "ivfpq", "nlist": 8, "nprobe": 3, "k_factor": 2}
    fresh = S.search(xb, xq, 10, progress=False, **settings)
    builds = []
    real = S.build_index
    monkeypatch.setattr(S, "build_index", lambda *a, **kw: builds.append(1) or real(*a, **kw))
    S.cache_indexes_in(tmp_path / "indexes")
    try:
        first = S.search(xb, xq, 10, progress=False, **settings)
        (kept,) = (tmp_path / "indexes").glob("ivfpq-*.faiss")
        again = S.search(xb, xq, 10, progress=False, **settings)
        assert len(builds) == 1  # the second search loaded the index
        for got in (first, again):
            np.testing.assert_array_equal(got[1], fresh[1])
            np.testing.assert_allclose(got[0], fresh[0], rtol=1e-6)
        S.search(xb, xq, 10, progress=False, **(settings | {"nprobe": 8}))  # other settings: another file
        S.search(xb[:500], xq, 10, progress=False, **settings)  # other vectors: another file
        assert len(builds) == 3 and len(list((tmp_path / "indexes").glob("*.faiss"))) == 3
        kept.write_bytes(kept.read_bytes()[:100])  # truncated
        with pytest.warns(UserWarning, match="rebuilding a damaged cached index"):
            damaged = S.search(xb, xq, 10, progress=False, **settings)
        np.testing.assert_array_equal(damaged[1], fresh[1])
        assert len(builds) == 4 and kept.stat().st_size > 100  # rebuilt and kept again
        S.search(xb, xq, 10, progress=False, index_type="flat")  # exact search is never kept
        assert len(list((tmp_path / "indexes").glob("*.faiss"))) == 3
    finally:
        S.cache_indexes_in(None)
