"""Exact cosine neighbours that never come from the query's own case (patient).

Search `k` + the largest case size, drop the neighbours of the query's own case, keep the first `k` left:
the own case can remove at most its size, so `k` always remain when the index has enough other images.
"""

from __future__ import annotations

import numpy as np

from cbmir.errors import CbmirError


class NeighbourError(CbmirError, ValueError):
    """A neighbour search that cannot be done as asked (k too large, shapes that disagree)."""


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy with unit-length rows (all-zero rows stay zero): inner product = cosine."""
    x = np.array(x, dtype=np.float32, copy=True)
    if x.ndim != 2:
        raise NeighbourError(f"embeddings must be a 2-D matrix, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _flat_index(x_index: np.ndarray):
    import faiss

    xb = normalise_rows(x_index)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return index


def _search(index, x_query: np.ndarray, k: int) -> np.ndarray:
    xq = normalise_rows(x_query)
    if xq.shape[1] != index.d:
        raise NeighbourError(f"index and query dimensions differ: {index.d} vs {xq.shape[1]}")
    if not 1 <= k <= index.ntotal:
        raise NeighbourError(f"parameter 'k' = {k} must be between 1 and the index size {index.ntotal}")
    return index.search(xq, k)[1].astype(np.int64)


def search(x_index: np.ndarray, x_query: np.ndarray, k: int) -> np.ndarray:
    """Positions [Q, k] of the `k` most cosine-similar rows of `x_index` for each query (exact, FAISS)."""
    return _search(_flat_index(x_index), x_query, k)


def neighbours_excluding_cases(
    x_index: np.ndarray,
    x_query: np.ndarray,
    k: int,
    index_cases: np.ndarray | None = None,
    query_cases: np.ndarray | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """Positions [Q, k] into `x_index` of each query's `k` nearest rows whose case differs from the query's.

    Without cases this is a plain search. Raises `NeighbourError` when a query has fewer than `k` rows of
    other cases in the index.
    """
    if (index_cases is None) != (query_cases is None):
        raise NeighbourError("give both 'index_cases' and 'query_cases', or neither")
    if index_cases is None:
        return search(x_index, x_query, k)
    index_cases, query_cases = np.asarray(index_cases), np.asarray(query_cases)
    if len(index_cases) != len(x_index) or len(query_cases) != len(x_query):
        raise NeighbourError(
            f"cases and embeddings disagree: {len(index_cases)} index cases for {len(x_index)} rows, "
            f"{len(query_cases)} query cases for {len(x_query)} rows"
        )
    _, per_case = np.unique(index_cases, return_counts=True)
    wide = min(len(x_index), k + int(per_case.max()))
    index = _flat_index(x_index)
    out = np.empty((len(x_query), k), dtype=np.int64)
    for start in range(0, len(x_query), chunk):
        stop = min(start + chunk, len(x_query))
        pos = _search(index, x_query[start:stop], wide)
        keep = index_cases[pos] != query_cases[start:stop, None]
        short = keep.sum(axis=1) < k
        if short.any():
            q = start + int(np.flatnonzero(short)[0])
            raise NeighbourError(
                f"query {q} has fewer than k = {k} index rows outside its own case; lower 'k'"
            )
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept positions first, rank order preserved
        out[start:stop] = np.take_along_axis(pos, order, axis=1)
    return out
