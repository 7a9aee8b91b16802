"""Nearest-neighbour search: cosine similarity with FAISS on L2-normalised float32 embeddings.

The default is exact search (`IndexFlatIP`, as in the paper): ~100 queries/s against 1.6 M x 512 on 2 cores, at
~95 % of the machine's float32 matrix-multiply rate. Approximate indexes ("hnsw", "ivf", "ivfpq") are built by
small functions whose defaults come from `benchmarks/bench_search.py`; "ivfpq" (4-bit fast-scan PQ candidates
re-ranked exactly against the stored vectors) is the one to use at the paper's scale: recall@10 0.98 at ~15x
exact, P@1 within 0.003 (benchmarks/RESULTS.md). Below ~100,000 index rows exact search is fast enough.

A neighbour table holds **manifest row positions**, never file paths: `ids[q, j]` is the manifest row of the
j-th neighbour of manifest row `query_rows[q]`.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.progress import hide_progress

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
UNIT_TOLERANCE = 1e-5  # rows whose norm is this close to 1 are used as they are (float32 rounding is ~1e-7)


@dataclass
class Neighbours:
    """Neighbour table: `query_rows` [Q] int64, `ids` [Q, K] int64 (manifest rows), `scores` [Q, K] float32.

    `index_rows` (optional) records the manifest rows that formed the search index, so that metrics can
    count each class's index images (n_c) from the index actually searched.
    """

    query_rows: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    index_rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.index_rows is not None:
            self.index_rows = np.asarray(self.index_rows, dtype=np.int64)
        self.query_rows = np.asarray(self.query_rows, dtype=np.int64)
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        q = len(self.query_rows)
        if self.query_rows.ndim != 1 or self.ids.ndim != 2 or self.ids.shape[0] != q:
            raise ValueError(
                f"Neighbours: ids must be [Q, K] with Q = len(query_rows) = {q}; got {self.ids.shape}"
            )
        if self.scores.shape != self.ids.shape:
            raise ValueError(f"Neighbours: scores shape {self.scores.shape} != ids shape {self.ids.shape}")

    @property
    def k(self) -> int:
        """Number of neighbours per query."""
        return int(self.ids.shape[1])

    def save(self, path: str | os.PathLike) -> None:
        """Write an `.npz` with arrays `query_rows`, `ids`, `scores` (and `index_rows` when known)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        extra = {} if self.index_rows is None else {"index_rows": self.index_rows}
        np.savez(path, query_rows=self.query_rows, ids=self.ids, scores=self.scores, **extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Neighbours:
        """Read a table written by `save`."""
        with np.load(path) as data:
            missing = {"query_rows", "ids", "scores"} - set(data.files)
            if missing:
                raise ValueError(f"{path}: not a neighbour table (missing arrays {sorted(missing)})")
            index_rows = data["index_rows"] if "index_rows" in data.files else None
            return cls(data["query_rows"], data["ids"], data["scores"], index_rows)


def l2_normalise(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Rows of `x` as float32 with unit L2 norm; non-finite or zero rows raise naming `name` and the row."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"parameter {name!r} must be a 2-D array [N, D]; got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"parameter {name!r} is empty (shape {x.shape})")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"parameter {name!r}: row {int(np.flatnonzero(~finite)[0])} has non-finite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"parameter {name!r}: row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros")
    if x.flags.c_contiguous and np.abs(norms - 1).max() <= UNIT_TOLERANCE:
        return x  # already unit rows (as every embedding store holds): no copy, which matters at 1.6 M rows
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def build_flat(x: np.ndarray) -> Any:
    """Exact inner-product index."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def build_hnsw(x: np.ndarray, m: int = 32, ef_construction: int = 40, ef_search: int = 256) -> Any:
    """HNSW graph over inner product. At 1.6 M x 512 on 2 cores (benchmarks/RESULTS.md) efConstruction 40 builds
    in ~10 min; efSearch 256 then gives recall@10 0.97 at 5.6x exact (efSearch 128: 0.93 at 10x). Prefer
    "ivfpq" at that scale: 3 min to build, recall@10 0.98 at 15x exact."""
    import faiss

    index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    index.add(x)
    return index


def default_nlist(n: int) -> int:
    """About 4 sqrt(N) inverted lists, at most one per 39 training vectors, at least 1."""
    return int(max(1, min(round(4 * np.sqrt(n)), n // 39)))


TRAIN_PER_LIST = 64


def train_sample(x: np.ndarray, nlist: int, per_list: int = TRAIN_PER_LIST, seed: int = 0) -> np.ndarray:
    """Seeded random rows of `x` (sorted), at most `per_list` per inverted list, to train the coarse quantiser.

    FAISS would otherwise cluster up to 256 points per list: at 1.6 M x 512 with ~5,000 lists that is about
    10 minutes on 2 cores, while 39 and 256 points per list gave the same recall (benchmarks/RESULTS.md).
    """
    m = per_list * nlist
    if m >= len(x):
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), m, replace=False))
    return np.ascontiguousarray(x[rows])


def default_nprobe(nlist: int) -> int:
    """About 5 % of the lists, at least 16: at 1.6 M x 512 (5,060 lists) nprobe 16 gave recall@10 ~0.6 and
    P@1 ~0.03 below exact, 256 gave 0.98 with "ivf" and "ivfpq" and P@1 within 0.003 (benchmarks/RESULTS.md)."""
    return int(max(16, round(nlist / 20)))


def build_ivf(x: np.ndarray, nlist: int | None = None, nprobe: int | None = None) -> Any:
    """IVF with flat (uncompressed) lists, coarse quantiser trained on `x`."""
    import faiss

    nlist = nlist or default_nlist(len(x))
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(train_sample(x, nlist))
    index.add(x)
    index.nprobe = min(nprobe or default_nprobe(nlist), nlist)
    return index


def default_pq_m(d: int, pq_nbits: int = 4) -> int:
    """PQ sub-quantisers: one per 2 dimensions with 4-bit codes (d / 2), one per 8 with 8-bit codes; always a
    divisor of `d`."""
    per = 2 if pq_nbits <= 4 else 8
    return max(m for m in range(1, max(1, d // per) + 1) if d % m == 0)


def build_ivfpq(
    x: np.ndarray,
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    pq_nbits: int = 4,
    k_factor: int = 4,
) -> Any:
    """IVF-PQ candidates re-ranked exactly against the stored vectors (`k_factor` x k candidates).

    4-bit codes (the default) use FAISS's SIMD fast-scan lists (`IndexIVFPQFastScan`), which scan the lists an
    order of magnitude faster than 8-bit `IndexIVFPQ`: at 1.6 M x 512 (benchmarks/RESULTS.md) the defaults
    (5,060 lists, nprobe 253, 256 sub-quantisers, k_factor 4) give recall@10 0.98 at ~15x exact search and P@1
    within 0.003 of exact, after a ~3 min build on 2 cores. The index holds the float32 vectors for re-ranking
    (as much memory as "flat") plus d/4 bytes of codes per vector.
    """
    import faiss

    d = x.shape[1]
    if pq_nbits not in (4, 8):
        raise ValueError(f"parameter 'pq_nbits' = {pq_nbits} must be 4 (fast-scan) or 8")
    pq_m = pq_m or default_pq_m(d, pq_nbits)
    if d % pq_m:
        raise ValueError(f"parameter 'pq_m' = {pq_m} must divide the embedding dimension {d}")
    if k_factor < 1:
        raise ValueError(f"parameter 'k_factor' = {k_factor} must be >= 1")
    if pq_nbits == 4 and len(x) < 16:
        raise ValueError(
            f"index_type 'ivfpq' with 4-bit codes needs at least 16 index vectors (got {len(x)}); use 'flat'"
        )
    nlist = nlist or default_nlist(len(x))
    quantizer = faiss.IndexFlatIP(d)
    if pq_nbits == 4:
        base = faiss.IndexIVFPQFastScan(quantizer, d, nlist, pq_m, 4, faiss.METRIC_INNER_PRODUCT)
    else:
        nbits = int(min(8, max(1, np.floor(np.log2(max(2, len(x) / 39))))))  # >= 39 points/centroid
        base = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
    base.nprobe = min(nprobe or default_nprobe(nlist), nlist)
    index = faiss.IndexRefineFlat(base)
    index.k_factor = k_factor
    index.train(train_sample(x, nlist))
    index.add(x)
    return index


BUILDERS = {"flat": build_flat, "hnsw": build_hnsw, "ivf": build_ivf, "ivfpq": build_ivfpq}


def check_index_params(index_type: str, params: dict[str, Any]) -> None:
    """Raise ValueError unless `index_type` is known and every key of `params` is one of its builder's."""
    if index_type not in BUILDERS:
        raise ValueError(f"parameter 'index_type' is {index_type!r}; allowed {list(INDEX_TYPES)}")
    allowed = list(inspect.signature(BUILDERS[index_type]).parameters)[1:]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"index_type {index_type!r} has no parameter(s) {unknown}; allowed {allowed}")


def build_index(x: np.ndarray, index_type: str = "flat", **params: Any) -> Any:
    """Build a FAISS index of `index_type` over normalised float32 `x` with builder `params`."""
    check_index_params(index_type, params)
    return BUILDERS[index_type](x, **params)


def search(
    index_vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    batch_size: int = 4096,
    index_type: str = "flat",
    progress: bool = True,
    **params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine search: (scores [Q, k] float32, ids [Q, k] int64 = positions in `index_vectors`).

    With `exclude_self`, `queries` must be the same rows as `index_vectors` (query i = index row i); each
    query's own row is dropped from its results (k + 1 are searched).
    """
    from tqdm.auto import tqdm

    check_index_params(index_type, params)
    xb = l2_normalise(index_vectors, "index_vectors")
    xq = l2_normalise(queries, "queries")
    if xq.shape[1] != xb.shape[1]:
        raise ValueError(
            f"parameter 'queries' has dimension {xq.shape[1]} but 'index_vectors' has {xb.shape[1]}"
        )
    if exclude_self and len(xq) != len(xb):
        raise ValueError(
            f"parameter 'exclude_self' needs queries = index rows; got {len(xq)} queries, {len(xb)} index rows"
        )
    available = len(xb) - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(
            f"parameter 'k' = {k} must be between 1 and {available} (index size{' - 1' * exclude_self})"
        )
    if batch_size < 1:
        raise ValueError(f"parameter 'batch_size' = {batch_size} must be >= 1")
    index = build_index(xb, index_type, **params)
    kk = k + int(exclude_self)
    scores = np.empty((len(xq), k), dtype=np.float32)
    ids = np.empty((len(xq), k), dtype=np.int64)
    for start in tqdm(
        range(0, len(xq), batch_size), desc="search", disable=hide_progress(progress), leave=False
    ):
        s, i = index.search(xq[start : start + batch_size], kk)
        if exclude_self:
            s, i = _drop_self(s, i, np.arange(start, start + len(i)), k)
        scores[start : start + len(s)] = s
        ids[start : start + len(i)] = i
    if (ids < 0).any():
        raise ValueError(
            f"index_type {index_type!r} returned fewer than k = {k} results for some queries; "
            "raise nprobe / ef_search or use 'flat'"
        )
    return scores, ids


def _drop_self(s: np.ndarray, i: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (or, if absent, its last result), keeping k results in order."""
    is_self = i == own[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True  # own row beyond k + 1 (many exact duplicates): drop the last instead
    first = np.argmax(is_self, axis=1)
    is_self[:] = False
    is_self[np.arange(len(i)), first] = True
    keep = ~is_self
    return s[keep].reshape(len(s), k), i[keep].reshape(len(i), k)


def search_rows(
    embeddings: np.ndarray,
    index_rows: np.ndarray,
    query_rows: np.ndarray,
    k: int = 100,
    *,
    embedding_rows: np.ndarray | None = None,
    exclude_self: bool = False,
    **kwargs: Any,
) -> Neighbours:
    """Search manifest rows `query_rows` against manifest rows `index_rows`; ids are manifest rows.

    `embeddings` has one row per manifest row, unless `embedding_rows` maps each manifest row to its row of
    `embeddings` (-1 = no embedding, an error for the rows used). `exclude_self` requires
    `query_rows` == `index_rows`. Other keyword arguments go to `search`.
    """
    index_rows = np.asarray(index_rows, dtype=np.int64)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    for name, rows in (("index_rows", index_rows), ("query_rows", query_rows)):
        if rows.ndim != 1 or len(rows) == 0:
            raise ValueError(f"parameter {name!r} must be a non-empty 1-D array of manifest rows")
    if exclude_self and not np.array_equal(index_rows, query_rows):
        raise ValueError("parameter 'exclude_self' requires query_rows to equal index_rows")
    n_manifest = len(embeddings) if embedding_rows is None else len(embedding_rows)
    mapping = np.arange(n_manifest) if embedding_rows is None else np.asarray(embedding_rows, dtype=np.int64)
    for name, rows in (("index_rows", index_rows), ("query_rows", query_rows)):
        bad = (rows < 0) | (rows >= n_manifest)
        if bad.any():
            raise ValueError(f"parameter {name!r}: row {rows[bad][0]} outside the {n_manifest} manifest rows")
        missing = mapping[rows] < 0
        if missing.any():
            raise ValueError(f"parameter {name!r}: manifest row {rows[missing][0]} has no embedding")
    xb = np.asarray(embeddings[mapping[index_rows]])
    xq = xb if exclude_self else np.asarray(embeddings[mapping[query_rows]])
    scores, pos = search(xb, xq, k, exclude_self=exclude_self, **kwargs)
    return Neighbours(query_rows=query_rows, ids=index_rows[pos], scores=scores, index_rows=index_rows)


def load_store_matrix(
    stores: list[str | os.PathLike], filepaths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Open embedding stores (`embeddings.npy` + `ids.csv`) and map manifest `filepaths` to their rows.

    Returns (embeddings [N, D] float32, embedding_rows [len(filepaths)] int64, -1 where a file has none).
    Several stores (one per dataset) are stacked in the given order.
    """
    import pandas as pd

    mats, ids = [], []
    for store in stores:
        store = Path(store)
        emb_path, ids_path = store / "embeddings.npy", store / "ids.csv"
        for p in (emb_path, ids_path):
            if not p.is_file():
                raise FileNotFoundError(f"embedding store {store}: missing {p.name}")
        mat = np.load(emb_path, mmap_mode="r")
        table = pd.read_csv(ids_path, dtype={"filepath": str})
        if "filepath" not in table.columns:
            raise ValueError(f"{ids_path}: no 'filepath' column; found {list(table.columns)}")
        if mat.ndim != 2 or len(mat) != len(table):
            raise ValueError(
                f"{emb_path}: shape {mat.shape} does not match the {len(table)} rows of {ids_path}"
            )
        mats.append(mat)
        ids.append(table["filepath"].to_numpy())
    if len({m.shape[1] for m in mats}) > 1:
        raise ValueError(f"embedding stores have different dimensions: {[m.shape[1] for m in mats]}")
    all_ids = np.concatenate(ids)
    lookup = pd.Series(np.arange(len(all_ids)), index=all_ids)
    if lookup.index.has_duplicates:
        raise ValueError(
            f"filepath {lookup.index[lookup.index.duplicated()][0]!r} appears twice in the stores"
        )
    rows = lookup.reindex(np.asarray(filepaths)).fillna(-1).to_numpy(dtype=np.int64)
    emb = mats[0] if len(mats) == 1 else np.concatenate([np.asarray(m) for m in mats])
    return emb, rows
