"""Nearest-neighbour search: cosine similarity with FAISS on L2-normalised float32 embeddings.

The default is exact search: the inner product with every vector, as the paper's `IndexFlatIP`, computed by
`flat_knn` in blocks instead of through that index, which would copy the vectors. Approximate indexes ("hnsw",
"ivf", "ivfpq") are built by small functions whose defaults come from `benchmarks/bench_search.py`; "ivfpq" (4-bit fast-scan PQ
candidates re-ranked exactly against the stored vectors) is the one to use at the paper's scale. Measured speed
and recall of each: `benchmarks/RESULTS.md`.

A neighbour table holds **manifest row positions**, never file paths: `ids[q, j]` is the manifest row of the
j-th neighbour of manifest row `query_rows[q]`. With `cases` (a case, e.g. patient, per manifest row), images
of the query's own case are never returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbmir.errors import CbmirError
from cbmir.progress import hide_progress
from cbmir.store import ManifestVectors, open_stores

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
UNIT_TOLERANCE = 1e-5  # rows whose norm is this close to 1 are used as they are (float32 rounding is ~1e-7)


class NeighbourTableError(CbmirError, ValueError):
    """A neighbour table file that is not one, or is truncated or damaged; the message names the file."""


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
        """Write an `.npz` with arrays `query_rows`, `ids`, `scores` (and `index_rows` when known), atomically:
        the file is either the old table or the complete new one."""
        from cbmir.store import atomic_open

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {} if self.index_rows is None else {"index_rows": self.index_rows}
        with atomic_open(path) as handle:
            np.savez(handle, query_rows=self.query_rows, ids=self.ids, scores=self.scores, **extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Neighbours:
        """Read a table written by `save`; `NeighbourTableError` naming the file if it is damaged or truncated."""
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"query_rows", "ids", "scores"} - set(data.files)
                if missing:
                    raise NeighbourTableError(
                        f"{path}: not a neighbour table (missing arrays {sorted(missing)})"
                    )
                index_rows = data["index_rows"] if "index_rows" in data.files else None
                arrays = data["query_rows"], data["ids"], data["scores"]
        except (OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
            raise NeighbourTableError(f"{path}: unreadable or truncated neighbour table ({err})") from err
        except ValueError as err:
            if isinstance(err, NeighbourTableError):
                raise
            raise NeighbourTableError(f"{path}: unreadable or truncated neighbour table ({err})") from err
        try:
            return cls(*arrays, index_rows)
        except ValueError as err:
            raise NeighbourTableError(f"{path}: inconsistent neighbour table ({err})") from err


NORM_CHUNK = 16_384  # rows at a time in `row_norms`


def row_norms(x: np.ndarray) -> np.ndarray:
    """The L2 norm of every row of a 2-D array, accumulated in float64 a chunk of rows at a time (a memmap is
    read once; no squared copy of the whole matrix)."""
    out = np.empty(len(x))
    for lo in range(0, len(x), NORM_CHUNK):
        part = x[lo : lo + NORM_CHUNK]
        with np.errstate(over="ignore", invalid="ignore"):  # inf / nan rows give a non-finite norm
            out[lo : lo + len(part)] = np.sqrt(np.einsum("ij,ij->i", part, part, dtype=np.float64))
    return out


def l2_normalise(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Rows of `x` as float32 with unit L2 norm; non-finite or zero rows raise naming `name` and the row."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"parameter {name!r} must be a 2-D array [N, D]; got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"parameter {name!r} is empty (shape {x.shape})")
    norms = row_norms(x)[:, None]  # a chunk at a time: no [N, D] temporaries (4.3 GB each at 1.4 M x 768)
    finite = np.isfinite(norms[:, 0])  # a row with a NaN or an infinity has a non-finite norm
    if not finite.all():
        raise ValueError(f"parameter {name!r}: row {int(np.flatnonzero(~finite)[0])} has non-finite values")
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


FLAT_BLOCK_ROWS = 1 << 18  # index rows per block of `flat_knn`: 0.8 GB at 768 dims


def flat_knn(
    xb: np.ndarray, xq: np.ndarray, k: int, block_rows: int = FLAT_BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of each query over the rows of `xb`, read one block of rows at a time, with
    no index: `IndexFlatIP` would copy all of `xb` (6.4 GB at 1.6 M x 1000), while `xb` here may be a store's
    memmap that is never copied. Ties rank the lower row first. (scores [Q, k] float32, ids [Q, k] int64)."""
    import faiss

    xq = np.ascontiguousarray(xq, dtype=np.float32)
    parts_s, parts_i = [], []
    for lo in range(0, len(xb), block_rows):
        block = np.ascontiguousarray(xb[lo : lo + block_rows], dtype=np.float32)
        s, i = faiss.knn(xq, block, min(k, len(block)), faiss.METRIC_INNER_PRODUCT)
        parts_s.append(s)
        parts_i.append(np.where(i >= 0, i + lo, -1))
    s, i = np.concatenate(parts_s, axis=1), np.concatenate(parts_i, axis=1)
    order = np.lexsort((i, -s.astype(np.float64)), axis=-1)[:, :k]  # by score, then by row
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def build_hnsw(x: np.ndarray, m: int = 32, ef_construction: int = 40, ef_search: int = 256) -> Any:
    """HNSW graph over inner product. At the paper's scale "ivfpq" builds faster and recalls more at the same
    speed; the measured trade-offs of `ef_construction` and `ef_search` are in benchmarks/RESULTS.md."""
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

    FAISS would otherwise cluster up to 256 points per list, which is slow at the paper's scale and gave no
    better recall than 39 per list (benchmarks/RESULTS.md).
    """
    m = per_list * nlist
    if m >= len(x):
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), m, replace=False))
    return np.ascontiguousarray(x[rows])


def default_nprobe(nlist: int) -> int:
    """About 5 % of the lists, at least 16 (the recall of smaller and larger values: benchmarks/RESULTS.md)."""
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


IVFPQ_K_FACTOR = 4  # IVF-PQ candidates per result re-ranked exactly (benchmarks/RESULTS.md)


def build_ivfpq(
    x: np.ndarray,
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    pq_nbits: int = 4,
    k_factor: int = IVFPQ_K_FACTOR,
) -> Any:
    """IVF-PQ candidates re-ranked exactly against the stored vectors (`k_factor` x k candidates).

    4-bit codes (the default) use FAISS's SIMD fast-scan lists (`IndexIVFPQFastScan`), which scan the lists
    much faster than 8-bit `IndexIVFPQ`; the defaults' recall, speed and build time at the paper's scale are in
    benchmarks/RESULTS.md. The index holds the float32 vectors for re-ranking (as much memory as "flat") plus
    d/4 bytes of codes per vector.
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
    base.train(train_sample(x, nlist))
    base.add(x)
    return _refined(base, x, {"nprobe": nprobe, "k_factor": k_factor})


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


_REUSE: dict[str, Any] | None = None  # the last built index, while a `reuse_index()` block is open
_CACHE_DIR: Path | None = None  # where built IVF-PQ indexes are kept between processes (`cache_indexes_in`)
CACHED_TYPES = ("ivfpq",)  # the index types worth keeping on disk: costly to build, small without the vectors


def cache_indexes_in(folder: str | os.PathLike | None) -> None:
    """Keep every IVF-PQ index this process builds in `folder` (None: stop), keyed by a hash of the index vectors
    and the settings, and load it from there instead of building it again: notebooks 3 and 7 search the same
    train vectors of each model, and at 1.4 M x 768 a build takes about 3 min, a load seconds. Only the PQ part is
    written (about d/4 bytes per vector at 4 bits); the exact re-ranking vectors are the index vectors themselves
    and are added back on load. A damaged file is reported and rebuilt. `Context.open` sets it to
    `<work_dir>/indexes`."""
    global _CACHE_DIR
    _CACHE_DIR = None if folder is None else Path(folder)


def _cache_key(xb: np.ndarray, index_type: str, params: dict[str, Any]) -> tuple:
    """(content hash of the index vectors, shape, index type, settings as JSON, faiss version)."""
    import faiss

    digest = hashlib.sha256(np.ascontiguousarray(xb).data).hexdigest()
    return digest, xb.shape, index_type, json.dumps(params, sort_keys=True, default=str), faiss.__version__


def _cached_file(key: tuple) -> Path:
    assert _CACHE_DIR is not None
    name = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    return _CACHE_DIR / f"{key[2]}-{name}.faiss"


def _load_cached(xb: np.ndarray, key: tuple) -> Any | None:
    """The cached index for `key` with `xb` added back as its re-ranking vectors; None if absent or damaged."""
    import faiss

    path = _cached_file(key)
    if not path.is_file():
        return None
    try:
        base = faiss.read_index(str(path))
        if base.ntotal != len(xb) or base.d != xb.shape[1]:
            raise ValueError(f"holds {base.ntotal} x {base.d}, expected {xb.shape[0]} x {xb.shape[1]}")
    except (RuntimeError, ValueError) as err:  # faiss raises RuntimeError for a truncated or foreign file
        warnings.warn(f"rebuilding a damaged cached index {path}: {err}", stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    return _refined(base, xb, json.loads(key[3]))


def _refined(base: Any, xb: np.ndarray, params: dict[str, Any]) -> Any:
    """`base` (a trained and filled IVF-PQ index) re-ranked exactly against `xb`, as `build_ivfpq` returns it."""
    import faiss

    ivf = faiss.extract_index_ivf(base)
    ivf.nprobe = min(params.get("nprobe") or default_nprobe(ivf.nlist), ivf.nlist)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    index = faiss.IndexRefineFlat(base, faiss.swig_ptr(xb))  # copies xb as the exact re-ranking vectors
    index.k_factor = params.get("k_factor") or IVFPQ_K_FACTOR
    return index


def _save_cached(index: Any, key: tuple) -> None:
    """Write the PQ part of a built IVF-PQ index (atomically) to its cache file; a failure only warns."""
    import faiss

    path = _cached_file(key)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(faiss.downcast_index(index).base_index, str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # a full disk costs a rebuild next time, nothing else
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not keep the built index in {path}: {err}", stacklevel=3)


@contextlib.contextmanager
def reuse_index():
    """Inside this block `search` keeps the last index it built and reuses it for the same index vectors (by
    content) and the same index settings: k selection on val and the test search against one train set then
    build an approximate index once (about 3 min for IVF-PQ over 1.4 M vectors). Left when the block closes."""
    global _REUSE
    outer = _REUSE
    _REUSE = {} if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _REUSE = None


def _index_for(xb: np.ndarray, index_type: str, params: dict[str, Any]) -> Any:
    """`build_index`; inside `reuse_index()` the index built last for equal vectors and settings; with
    `cache_indexes_in` an IVF-PQ index kept on disk by an earlier build (of this or another process)."""
    on_disk = _CACHE_DIR is not None and index_type in CACHED_TYPES
    if _REUSE is None and not on_disk:
        return build_index(xb, index_type, **params)
    key = _cache_key(xb, index_type, params)
    if _REUSE is not None and _REUSE.get("key") == key:
        return _REUSE["index"]
    index = _load_cached(xb, key) if on_disk else None
    if index is None:
        index = build_index(xb, index_type, **params)
        if on_disk:
            _save_cached(index, key)
    if _REUSE is not None:
        _REUSE.clear()  # one index at a time: at the paper's size each holds gigabytes
        _REUSE.update(key=key, index=index)
    return index


def table_lock(path: str | os.PathLike, wait: bool = False) -> contextlib.AbstractContextManager[None]:
    """The one-writer lock of the neighbour table at `path` (`path.lock` beside it); hold it while searching
    and saving. Another holder raises `cbmir.locking.LockedError` naming it, unless `wait`."""
    from cbmir.locking import writer_lock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return writer_lock(path.with_name(path.name + ".lock"), f"neighbour table {path}", wait=wait)


def _own_case_counts(
    index_cases: np.ndarray, query_cases: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index case codes, query case codes, how many index rows share each query's case)."""
    codes = pd.factorize(np.concatenate([np.asarray(index_cases), np.asarray(query_cases)]))[0]
    icode, qcode = codes[: len(index_cases)], codes[len(index_cases) :]
    own = np.bincount(icode, minlength=codes.max() + 1)[qcode] if len(codes) else np.zeros(0, np.int64)
    return icode, qcode, own


def max_k(n_index: int, index_cases: np.ndarray | None = None, query_cases: np.ndarray | None = None) -> int:
    """The largest k every query can get: the index size less the largest own-case count among the queries."""
    if index_cases is None or query_cases is None or len(query_cases) == 0:
        return n_index
    return n_index - int(_own_case_counts(index_cases, query_cases)[2].max())


def search(
    index_vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    index_cases: np.ndarray | None = None,
    query_cases: np.ndarray | None = None,
    batch_size: int = 4096,
    index_type: str = "flat",
    progress: bool = True,
    **params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine search: (scores [Q, k] float32, ids [Q, k] int64 = positions in `index_vectors`).

    With `exclude_self`, `queries` must be the same rows as `index_vectors` (query i = index row i); each
    query's own row is dropped from its results (k + 1 are searched). With `index_cases` and `query_cases`
    (a case id per index row and per query), index rows of the query's own case are dropped before ranking:
    k + the largest own-case count are searched, then filtered.
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
    by_case = index_cases is not None or query_cases is not None
    if by_case:
        if index_cases is None or query_cases is None:
            raise ValueError("parameters 'index_cases' and 'query_cases' go together: give both or neither")
        for name, cases, n in (("index_cases", index_cases, len(xb)), ("query_cases", query_cases, len(xq))):
            if np.ndim(cases) != 1 or len(cases) != n:
                raise ValueError(
                    f"parameter {name!r} must hold one case per row ({n}); got shape {np.shape(cases)}"
                )
        icode, qcode, own = _own_case_counts(index_cases, query_cases)
        if exclude_self:
            own = np.maximum(own, 1)
        extra = int(own.max())
        available, what = len(xb) - extra, "index size - the largest own-case count among the queries"
    else:
        extra = int(exclude_self)
        available, what = len(xb) - extra, "index size" + " - 1" * exclude_self
    if not 1 <= k <= available:
        raise ValueError(f"parameter 'k' = {k} must be between 1 and {available} ({what})")
    if batch_size < 1:
        raise ValueError(f"parameter 'batch_size' = {batch_size} must be >= 1")
    if index_type == "flat":  # exact: scanned in blocks, no index (an index would copy every vector)

        def search_batch(q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
            return flat_knn(xb, q, kk)

    else:
        search_batch = _index_for(xb, index_type, params).search
    kk = min(k + extra, len(xb))
    scores = np.empty((len(xq), k), dtype=np.float32)
    ids = np.empty((len(xq), k), dtype=np.int64)
    for start in tqdm(
        range(0, len(xq), batch_size), desc="search", disable=hide_progress(progress), leave=False
    ):
        s, i = search_batch(xq[start : start + batch_size], kk)
        if by_case:
            own_row = np.arange(start, start + len(i)) if exclude_self else None
            s, i = _drop_own_case(s, i, icode, qcode[start : start + len(i)], k, own_row)
        elif exclude_self:
            s, i = _drop_self(s, i, np.arange(start, start + len(i)), k)
        scores[start : start + len(s)] = s
        ids[start : start + len(i)] = i
    if (ids < 0).any():
        raise ValueError(
            f"index_type {index_type!r} returned fewer than k = {k} results for some queries; "
            "raise nprobe / ef_search or use 'flat'"
        )
    return scores, ids


def _drop_own_case(
    s: np.ndarray, i: np.ndarray, icode: np.ndarray, qcode: np.ndarray, k: int, own_row: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Keep, in rank order, the first k results outside each query's case (-1 where fewer remain)."""
    valid = i >= 0
    keep = valid & (icode[np.where(valid, i, 0)] != qcode[:, None])
    if own_row is not None:
        keep &= i != own_row[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    s, i, kept = (np.take_along_axis(a, order, axis=1) for a in (s, i, keep))
    return np.where(kept, s, -np.inf).astype(np.float32), np.where(kept, i, -1)


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
    vectors: np.ndarray | ManifestVectors,
    index_rows: np.ndarray,
    query_rows: np.ndarray,
    k: int = 100,
    *,
    embedding_rows: np.ndarray | None = None,
    exclude_self: bool = False,
    cases: np.ndarray | None = None,
    **kwargs: Any,
) -> Neighbours:
    """Search manifest rows `query_rows` against manifest rows `index_rows`; ids are manifest rows.

    `vectors` is a `ManifestVectors` (a model's vectors for the manifest), or an array with one row per
    manifest row unless `embedding_rows` maps each manifest row to its row (-1 = no embedding, an error for
    the rows used). `exclude_self` requires `query_rows` == `index_rows`. `cases` (one case id per manifest
    row, e.g. from `cbmir.manifest.case_ids`) drops neighbours of the query's own case. Other keyword arguments go to
    `search`.
    """
    index_rows = np.asarray(index_rows, dtype=np.int64)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    for name, rows in (("index_rows", index_rows), ("query_rows", query_rows)):
        if rows.ndim != 1 or len(rows) == 0:
            raise ValueError(f"parameter {name!r} must be a non-empty 1-D array of manifest rows")
    if exclude_self and not np.array_equal(index_rows, query_rows):
        raise ValueError("parameter 'exclude_self' requires query_rows to equal index_rows")
    if not isinstance(vectors, ManifestVectors):
        n = len(vectors) if embedding_rows is None else len(embedding_rows)
        mapping = np.arange(n) if embedding_rows is None else np.asarray(embedding_rows, dtype=np.int64)
        vectors = ManifestVectors(vectors, mapping, [])
    elif embedding_rows is not None:
        raise ValueError(
            "parameter 'embedding_rows' is only for a plain array; ManifestVectors maps its rows"
        )
    xb = vectors.take(index_rows, "index_rows")
    xq = xb if exclude_self else vectors.take(query_rows, "query_rows")
    case_args = {}
    if cases is not None:
        cases = np.asarray(cases)
        if cases.ndim != 1 or len(cases) != len(vectors):
            raise ValueError(
                f"parameter 'cases' must hold one case per manifest row ({len(vectors)}); got {cases.shape}"
            )
        case_args = {"index_cases": cases[index_rows], "query_cases": cases[query_rows]}
    scores, pos = search(xb, xq, k, exclude_self=exclude_self, **case_args, **kwargs)
    return Neighbours(query_rows=query_rows, ids=index_rows[pos], scores=scores, index_rows=index_rows)


def load_store_matrix(
    stores: Sequence[str | os.PathLike], filepaths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Open complete embedding stores and map manifest `filepaths` to their rows (see `store.open_stores`).

    Returns (embeddings [N, D] float32, embedding_rows [len(filepaths)] int64, -1 where a file has none).
    Several stores (one per dataset) are stacked in the given order.
    """
    vectors = open_stores(stores, np.asarray(filepaths, dtype=object))
    return vectors.matrix, vectors.store_row
