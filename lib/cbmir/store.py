"""The embedding store: the one module that reads and writes store files (ARCHITECTURE.md §2).

A store is one folder per (model, dataset):

- `embeddings.npy`   float32 `[N, D]`, rows L2-normalised (opened as a read-only memmap)
- `ids.csv`          column `filepath`: the manifest filepath of each row, in row order
- `provenance.json`  spec, embedding rule, weights hash, preprocessing, library versions, date, ...
- `failed.csv`       `filepath,error` for each image that could not be read (skipped, never silent)

While a run is in progress, results go to `chunks/chunk_NNNNNN.npz` (fixed manifest row ranges, each written
atomically) next to `chunks/plan.json`. The final files are assembled atomically and `provenance.json`,
written last, marks the store complete. `.writer.lock` (and its `.owner` side file) exist while a run
holds the store. Every write that fails for lack of disk space raises `StoreError` naming the file; what
was already committed stays on disk.

`EmbeddingStore.vectors_for(manifest)` gives "this model's vectors for these manifest rows" as one object.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbmir.errors import CbmirError
from cbmir.locking import LockedError, writer_lock

FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.csv"
PROVENANCE_FILE = "provenance.json"
FAILED_FILE = "failed.csv"
CHUNKS_DIR = "chunks"
PLAN_FILE = "plan.json"
LOCK_FILE = ".writer.lock"
_CHUNK_RE = re.compile(r"^chunk_(\d{6})\.npz$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
PLAN_KEYS = (
    "format_version",
    "spec",
    "checkpoint",
    "manifest_ids_sha256",
    "n_rows",
    "chunk_size",
    "bf16",
    "precision",
    "dim",
)


class StoreError(CbmirError, RuntimeError):
    """An embedding store or its partial results do not match the requested run, or cannot be written."""


class StoreLockedError(StoreError, LockedError):
    """Another process is writing this store."""


# --------------------------------------------------------------------------------------------- the store
@dataclass
class EmbeddingStore:
    """A finished store: `embeddings` (read-only memmap), `ids` (filepaths), `provenance`, `failed`."""

    path: Path
    embeddings: np.ndarray
    ids: np.ndarray
    provenance: dict[str, Any]
    failed: pd.DataFrame = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> EmbeddingStore:
        """Open a complete store; `StoreError` naming the folder if it is missing, unfinished or damaged."""
        path = Path(path)
        if not is_complete(path):
            raise StoreError(f"{path} is not a complete embedding store (missing, unfinished or truncated)")
        embeddings = np.load(path / EMBEDDINGS_FILE, mmap_mode="r")
        provenance = json.loads((path / PROVENANCE_FILE).read_text())
        try:
            ids = _read_ids(path / IDS_FILE)
            failed = _read_failed(path / FAILED_FILE)
        except (OSError, ValueError) as err:  # pandas raises ValueError subclasses for damaged CSV
            raise StoreError(f"{path}: unreadable {IDS_FILE} or {FAILED_FILE} ({err})") from err
        if embeddings.dtype != np.float32 or embeddings.shape[0] != len(ids):
            raise StoreError(
                f"{path}: {EMBEDDINGS_FILE} has shape {embeddings.shape} ({embeddings.dtype}) "
                f"but {IDS_FILE} has {len(ids)} ids"
            )
        if "failed" in provenance and provenance["failed"] != len(failed):
            raise StoreError(
                f"{path}: {FAILED_FILE} lists {len(failed)} images, provenance says {provenance['failed']}"
            )
        return cls(path, embeddings, ids, provenance, failed)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @cached_property
    def _index(self) -> pd.Index:
        return pd.Index(self.ids)

    def rows_for(self, filepaths: Iterable[str]) -> np.ndarray:
        """Row positions (int64) of these manifest filepaths; `KeyError` lists any that are not stored."""
        wanted = np.asarray(
            list(filepaths) if not isinstance(filepaths, np.ndarray) else filepaths, dtype=object
        )
        rows = self._index.get_indexer(wanted)
        if (rows < 0).any():
            missing = [str(v) for v in wanted[rows < 0]]
            failed = set(self.failed["filepath"]) & set(missing)
            note = f"; {len(failed)} of them failed to load (see {FAILED_FILE})" if failed else ""
            shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise KeyError(f"{len(missing)} filepath(s) not in embedding store {self.path}: {shown}{note}")
        return rows.astype(np.int64)

    def vectors_for(self, manifest: pd.DataFrame | Sequence[str] | np.ndarray) -> ManifestVectors:
        """This store's vectors for the rows of `manifest` (a DataFrame with `filepath`, or the filepaths)."""
        return ManifestVectors.build([self], manifest)

    def release_pages(self) -> bool:
        """Drop this process's resident pages of the memmapped matrix (see `release_pages`)."""
        return release_pages(self.embeddings)


def release_pages(matrix: np.ndarray) -> bool:
    """Unmap the resident pages of a read-only memmap from this process (`madvise(MADV_DONTNEED)`). The data
    stays valid and is read back from the page cache or the file on its next access; until then it no longer
    counts in this process's RSS. So a notebook that reads 1.6 M x 768 vectors of nine models one after another
    holds one model's pages, not nine (4.9 GB each). False (and nothing done) for an array that is not a memmap
    or on a platform without madvise."""
    import mmap

    mapped = getattr(matrix, "_mmap", None)
    if mapped is None or not hasattr(mapped, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    mapped.madvise(mmap.MADV_DONTNEED)
    return True


# `ManifestVectors.take` releases the memmap's pages after a copy this large
RELEASE_AFTER_BYTES = 256 * 2**20


@dataclass
class ManifestVectors:
    """One model's vectors for the rows of one manifest.

    `matrix` is the store's embedding matrix (a read-only memmap, untouched); `store_row[r]` is the row of
    `matrix` that holds manifest row r, or -1 where that image failed to load or is not in the store;
    `failed_rows` are those manifest rows. `stores` are the stores the vectors come from.
    """

    matrix: np.ndarray
    store_row: np.ndarray
    stores: list[EmbeddingStore] = field(repr=False)

    @classmethod
    def build(
        cls, stores: Sequence[EmbeddingStore], manifest: pd.DataFrame | Sequence[str] | np.ndarray
    ) -> ManifestVectors:
        """Map each manifest filepath to its row in `stores` (stacked in order; one per dataset is fine)."""
        filepaths = manifest["filepath"] if isinstance(manifest, pd.DataFrame) else manifest
        filepaths = np.asarray(filepaths, dtype=object)
        if not stores:
            raise ValueError("parameter 'stores' is empty")
        if len({s.dim for s in stores}) > 1:
            raise StoreError(
                f"embedding stores have different dimensions: { {str(s.path): s.dim for s in stores} }"
            )
        ids = np.concatenate([s.ids for s in stores])
        lookup = pd.Index(ids)
        if lookup.has_duplicates:
            dup = lookup[lookup.duplicated()][0]
            raise StoreError(f"filepath {dup!r} appears twice in the stores {[str(s.path) for s in stores]}")
        store_row = lookup.get_indexer(filepaths).astype(np.int64)
        matrix = stores[0].embeddings if len(stores) == 1 else np.concatenate([s.embeddings for s in stores])
        return cls(matrix, store_row, list(stores))

    def __len__(self) -> int:
        return len(self.store_row)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @cached_property
    def failed_rows(self) -> np.ndarray:
        """Manifest rows without a vector (their image failed to load, or is not in the store)."""
        return np.flatnonzero(self.store_row < 0)

    def present(self, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """The manifest rows among `rows` (default: all) that have a vector, in the given order."""
        rows = np.arange(len(self.store_row)) if rows is None else self._check(rows, "rows")
        return rows[self.store_row[rows] >= 0]

    def take(self, rows: np.ndarray | Sequence[int], name: str = "rows") -> np.ndarray:
        """Vectors of these manifest rows, `[len(rows), D]` float32; every row must have one. A copy, except
        when the rows are the whole matrix in its order: then the (read-only) matrix itself, since a copy of it
        is 4.9 GB at 1.6 M x 768. After a copy of `RELEASE_AFTER_BYTES` or more, the memmap's pages are released
        (`release_pages`): the copy holds the data, and the mapping would otherwise count a second time."""
        rows = self._check(rows, name)
        at = self.store_row[rows]
        missing = at < 0
        if missing.any():
            raise ValueError(
                f"parameter {name!r}: manifest row {int(rows[missing][0])} has no embedding "
                f"({int(missing.sum())} of {len(rows)} rows have none; see {FAILED_FILE})"
            )
        if len(at) == len(self.matrix) and np.array_equal(at, np.arange(len(at))):
            whole = self.matrix.view()
            whole.flags.writeable = False
            return whole
        out = np.asarray(self.matrix[at])
        if out.nbytes >= RELEASE_AFTER_BYTES:
            release_pages(self.matrix)
        return out

    def _check(self, rows: np.ndarray | Sequence[int], name: str) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ValueError(f"parameter {name!r} must be a 1-D array of manifest rows")
        bad = (rows < 0) | (rows >= len(self.store_row))
        if bad.any():
            raise ValueError(
                f"parameter {name!r}: row {int(rows[bad][0])} outside the {len(self.store_row)} manifest rows"
            )
        return rows


def open_stores(
    stores: Sequence[str | os.PathLike], manifest: pd.DataFrame | Sequence[str]
) -> ManifestVectors:
    """Open complete stores (one per dataset is fine) and map the manifest's rows to their vectors."""
    return ManifestVectors.build([EmbeddingStore.open(s) for s in stores], manifest)


def is_complete(path: str | os.PathLike) -> bool:
    """True when `path` holds a finished store whose final files are present, readable and agree in size."""
    path = Path(path)
    names = (EMBEDDINGS_FILE, IDS_FILE, PROVENANCE_FILE, FAILED_FILE)
    if not all((path / name).is_file() for name in names):
        return False
    try:
        provenance = json.loads((path / PROVENANCE_FILE).read_text())
        shape = np.load(path / EMBEDDINGS_FILE, mmap_mode="r").shape  # a truncated .npy fails here
    except (OSError, ValueError):
        return False
    return isinstance(provenance, dict) and len(shape) == 2 and provenance.get("rows") == shape[0]


def _read_ids(path: Path) -> np.ndarray:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "filepath" not in frame.columns:
        raise StoreError(f"{path} has no 'filepath' column")
    return frame["filepath"].to_numpy(dtype=object)


def _read_failed(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frame.astype(object) if len(frame) else pd.DataFrame({"filepath": [], "error": []}, dtype=object)


# ------------------------------------------------------------------------------------------ atomic files
def no_space(err: BaseException) -> bool:
    """True for 'no space left on device' (or a full quota)."""
    return isinstance(err, OSError) and err.errno in _NO_SPACE


def _no_space_error(target: Path, err: OSError) -> StoreError:
    return StoreError(
        f"cannot write {target}: no space left on device ({os.strerror(err.errno)}). Everything written "
        "before it is kept; free some space and run again to continue where it stopped."
    )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(target: Path, mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary file beside `target`, fsync it, then `os.replace` it into place.

    The target is either the old file or the complete new one; lack of disk space raises `StoreError`.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise (_no_space_error(target, err) if no_space(err) else err) from err
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if no_space(err):
            raise _no_space_error(target, err) from err
        raise
    _fsync_dir(target.parent)


def write_json(target: Path, payload: dict[str, Any]) -> None:
    with atomic_open(target, "w") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.write("\n")


def write_csv(target: Path, frame: pd.DataFrame) -> None:
    with atomic_open(target, "w") as handle:
        frame.to_csv(handle, index=False)


def remove_stale_temps(folder: Path) -> None:
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and prove a file can be made in it; `StoreError` naming it otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = (
            "no space left on device" if no_space(err) else f"{type(err).__name__}: {err.strerror or err}"
        )
        raise StoreError(f"output folder {folder} cannot be written ({reason})") from err


def store_lock(out_dir: Path, wait: bool = False) -> contextlib.AbstractContextManager[None]:
    """The one-writer lock of the store at `out_dir` (see `cbmir.locking.writer_lock`)."""
    return writer_lock(out_dir / LOCK_FILE, f"embedding store {out_dir}", wait=wait, error=StoreLockedError)


# ------------------------------------------------------------------------------------- plan and chunks
def chunk_bounds(n_rows: int, chunk_size: int, index: int) -> tuple[int, int]:
    """Manifest rows [lo, hi) of chunk `index`."""
    return index * chunk_size, min((index + 1) * chunk_size, n_rows)


def chunk_path(chunks: Path, index: int) -> Path:
    return chunks / f"chunk_{index:06d}.npz"


def done_chunks(chunks: Path, n_chunks: int) -> set[int]:
    """Indices of the chunks already on disk."""
    done = set()
    for entry in chunks.iterdir() if chunks.is_dir() else ():
        match = _CHUNK_RE.match(entry.name)
        if match and int(match.group(1)) < n_chunks:
            done.add(int(match.group(1)))
    return done


def check_plan(chunks: Path, plan: dict[str, Any]) -> None:
    """Create `plan.json`, or check that the existing one describes the same run."""
    plan_path = chunks / PLAN_FILE
    if not plan_path.exists():
        write_json(plan_path, plan)
        return
    try:
        existing = json.loads(plan_path.read_text())
    except ValueError as err:
        raise StoreError(f"{plan_path} is unreadable ({err}); remove {chunks} or pass redo=True") from err
    diffs = [
        f"{k}: {existing.get(k)!r} -> {plan.get(k)!r}" for k in PLAN_KEYS if existing.get(k) != plan.get(k)
    ]
    if diffs:
        raise StoreError(
            f"partial results in {chunks} were made for a different run ({'; '.join(diffs)}). "
            "Pass redo=True (--redo) to discard them, or choose another output folder."
        )


def write_chunk(
    path: Path,
    rows: list[int],
    vectors: list[np.ndarray],
    failures: list[tuple[int, str]],
    dim: int,
    seconds: float = float("nan"),
) -> None:
    """Write one chunk atomically: its embedded rows (sorted), their vectors, its failures and its wall time."""
    order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
    matrix = np.concatenate(vectors, axis=0)[order] if vectors else np.zeros((0, dim), np.float32)
    failures = sorted(failures)
    with atomic_open(path) as handle:
        np.savez(
            handle,
            rows=np.asarray(rows, dtype=np.int64)[order],
            embeddings=np.ascontiguousarray(matrix, dtype=np.float32),
            failed_rows=np.asarray([r for r, _ in failures], dtype=np.int64),
            failed_errors=np.asarray([e for _, e in failures], dtype=str),
            seconds=np.float64(seconds),  # wall time spent on this chunk (decode + forward)
        )


def read_chunk(path: Path, lo: int, hi: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Load some arrays of one chunk file; `StoreError` naming the file if it is unreadable or wrong."""
    try:
        with np.load(path, allow_pickle=False) as data:
            chunk = {key: data[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise StoreError(
            f"chunk file {path} is unreadable ({err}); delete it to recompute that chunk"
        ) from err
    if "failed_rows" in chunk:
        covered = np.sort(np.concatenate([chunk["rows"], chunk["failed_rows"]]))
        if not np.array_equal(covered, np.arange(lo, hi)):
            raise StoreError(
                f"chunk file {path} does not cover manifest rows {lo}..{hi - 1}; delete it to recompute"
            )
    return chunk


def _chunk_seconds(path: Path) -> float:
    """Wall time recorded for a chunk (NaN for chunks written before timings were recorded)."""
    with np.load(path, allow_pickle=False) as data:
        return float(data["seconds"]) if "seconds" in data.files else float("nan")


# ------------------------------------------------------------------------------------------ final files
def check_reusable(out_dir: Path, spec: str, checkpoint: str | None, ids_hash: str) -> bool:
    """A complete store for the same ids and spec: True; a complete store for another run: `StoreError`."""
    if not is_complete(out_dir):
        return False
    prov = json.loads((out_dir / PROVENANCE_FILE).read_text())
    diffs = []
    if prov.get("manifest_ids_sha256") != ids_hash:
        diffs.append("the manifest rows differ")
    if prov.get("spec") != spec:
        diffs.append(f"spec {prov.get('spec')!r} != {spec!r}")
    if checkpoint is not None and prov.get("checkpoint") != checkpoint:
        diffs.append(f"checkpoint {prov.get('checkpoint')!r} != {checkpoint!r}")
    if diffs:
        raise StoreError(
            f"{out_dir} already holds a complete store for another run ({'; '.join(diffs)}). "
            "Pass redo=True (--redo) to replace it, or choose another output folder."
        )
    return True


def clear_final_files(out_dir: Path) -> None:
    """Remove the final files (completion marker first), keeping any chunks."""
    for name in (PROVENANCE_FILE, EMBEDDINGS_FILE, IDS_FILE, FAILED_FILE):
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()


def clear_store(out_dir: Path) -> None:
    """Remove our own files, never anything else in the folder."""
    clear_final_files(out_dir)
    shutil.rmtree(out_dir / CHUNKS_DIR, ignore_errors=True)


def _reserve(path: str, nbytes: int) -> None:
    """Allocate the file's blocks now, so that a full disk is an `OSError` here and never a crash (SIGBUS)
    while writing through the memory map later. File systems without `posix_fallocate` are left as they are."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "rb+") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, nbytes)
        except OSError as err:
            if no_space(err):
                raise
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _write_matrix(
    target: Path, paths: list[Path], bounds: list[tuple[int, int]], meta: list[dict], dim: int
) -> None:
    """Stream the chunks' vectors into a memory-mapped temporary `.npy`, then move it into place."""
    n = sum(len(m["rows"]) for m in meta)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        _reserve(tmp, os.path.getsize(tmp))
        start = 0
        for path, (lo, hi), m in zip(paths, bounds, meta, strict=True):
            part = read_chunk(path, lo, hi, ("embeddings",))["embeddings"]
            if part.shape != (len(m["rows"]), dim):
                raise StoreError(
                    f"chunk file {path} holds embeddings of shape {part.shape}, expected ({len(m['rows'])}, {dim})"
                )
            matrix[start : start + len(part)] = part
            start += len(part)
        matrix.flush()
        del matrix
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if no_space(err):
            raise _no_space_error(target, err) from err
        raise


def assemble(
    out_dir: Path, chunks: Path, ids: list[str], plan: dict[str, Any], provenance: dict[str, Any]
) -> None:
    """Build the final files from the chunks (each atomically, provenance last), then remove the chunks.

    Memory stays at one chunk: the matrix is streamed chunk by chunk into a memory-mapped file.
    """
    n_rows, chunk_size, dim = plan["n_rows"], plan["chunk_size"], plan["dim"]
    bounds = [chunk_bounds(n_rows, chunk_size, k) for k in range(math.ceil(n_rows / chunk_size))]
    paths = [chunk_path(chunks, k) for k in range(len(bounds))]
    meta = [
        read_chunk(p, lo, hi, ("rows", "failed_rows", "failed_errors"))
        for p, (lo, hi) in zip(paths, bounds, strict=True)
    ]
    rows = np.concatenate([m["rows"] for m in meta]) if meta else np.zeros(0, np.int64)
    _write_matrix(out_dir / EMBEDDINGS_FILE, paths, bounds, meta, dim)
    write_csv(out_dir / IDS_FILE, pd.DataFrame({"filepath": [ids[r] for r in rows]}, dtype=object))
    failed = [
        (int(r), str(e)) for m in meta for r, e in zip(m["failed_rows"], m["failed_errors"], strict=True)
    ]
    failed_frame = pd.DataFrame(
        {"filepath": [ids[r] for r, _ in failed], "error": [e for _, e in failed]}, dtype=object
    )
    write_csv(out_dir / FAILED_FILE, failed_frame)
    seconds = sum(_chunk_seconds(p) for p in paths)
    timing = {"seconds": seconds, "images_per_second": n_rows / seconds if seconds > 0 else None}
    write_json(out_dir / PROVENANCE_FILE, {**provenance, **timing, "rows": len(rows), "failed": len(failed)})
    shutil.rmtree(chunks, ignore_errors=True)


# ------------------------------------------------------------------------------------------ import
IMPORT_CHUNK_ROWS = 65_536  # rows normalised at a time when a store is written from vectors made elsewhere


def _row_norms(matrix: np.ndarray, rows: np.ndarray, ids: Sequence[str], chunk_rows: int) -> np.ndarray:
    """L2 norms (float32) of `matrix[rows]`, chunk by chunk; `ValueError` naming the first bad row."""
    norms = np.empty(len(rows), dtype=np.float32)
    for lo in range(0, len(rows), chunk_rows):
        part = np.asarray(matrix[rows[lo : lo + chunk_rows]], dtype=np.float32)
        norms[lo : lo + len(part)] = np.linalg.norm(part, axis=1)
    bad = ~(np.isfinite(norms) & (norms > 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"parameter 'embeddings': row {first} ({ids[first]}) is not finite or all zeros")
    return norms


def _normalise_into(
    source: np.ndarray, rows: np.ndarray, norms: np.ndarray, target: np.ndarray, chunk_rows: int
) -> None:
    """target[i] = source[rows[i]] / norms[i], chunk by chunk (`target` may be `source` when rows are
    ascending: row i is written only after rows[i] >= i has been read)."""
    for lo in range(0, len(rows), chunk_rows):
        part = np.asarray(source[rows[lo : lo + chunk_rows]], dtype=np.float32)
        target[lo : lo + len(part)] = part / norms[lo : lo + len(part), None]


def _check_import(embeddings: np.ndarray, ids: list[str], rows: np.ndarray | None) -> np.ndarray:
    if embeddings.ndim != 2:
        raise ValueError(f"parameter 'embeddings' must be [N, D]; got shape {embeddings.shape}")
    rows = np.arange(len(embeddings)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) != len(ids):
        raise ValueError(
            f"parameter 'embeddings' must be [N, D] with N = {len(ids)} filepaths; got {len(rows)} rows "
            f"(shape {embeddings.shape})"
        )
    if len(rows) and (rows.min() < 0 or rows.max() >= len(embeddings)):
        raise ValueError(f"parameter 'rows' holds a row outside the {len(embeddings)} rows of 'embeddings'")
    if len(set(ids)) != len(ids):
        raise ValueError("parameter 'filepaths' has duplicates; store ids must be unique")
    return rows


def write_store(
    out_dir: str | os.PathLike,
    embeddings: np.ndarray,
    filepaths: Sequence[str],
    *,
    spec: str,
    failed: pd.DataFrame | None = None,
    provenance: dict[str, Any] | None = None,
    wait: bool = False,
    rows: np.ndarray | None = None,
    chunk_rows: int = IMPORT_CHUNK_ROWS,
) -> EmbeddingStore:
    """Write a complete store from vectors made elsewhere (e.g. published embeddings), rows L2-normalised.

    `filepaths` are the manifest filepaths of the rows; `rows` (default: all) picks the rows of `embeddings`
    (e.g. a memmap) that become the store, in that order. `failed` (columns `filepath`, `error`) lists images
    without a vector. The matrix is normalised `chunk_rows` rows at a time into a memory-mapped temporary file,
    so memory stays at one chunk whatever the size. The files land atomically, `provenance.json` last, under
    the store's writer lock; a row that is not finite or all zeros is a `ValueError` before anything changes.
    """
    out_dir = Path(out_dir)
    if not isinstance(embeddings, np.ndarray):
        embeddings = np.asarray(embeddings, dtype=np.float32)
    ids = [str(p) for p in filepaths]
    rows = _check_import(embeddings, ids, rows)
    norms = _row_norms(embeddings, rows, ids, chunk_rows)
    dim = int(embeddings.shape[1])
    check_writable(out_dir)
    with store_lock(out_dir, wait=wait):
        target = out_dir / EMBEDDINGS_FILE
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        try:
            if len(rows):
                matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(rows), dim))
                _reserve(tmp, os.path.getsize(tmp))
                _normalise_into(embeddings, rows, norms, matrix, chunk_rows)
                matrix.flush()
                del matrix
            else:
                np.save(tmp, np.zeros((0, dim), np.float32))
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            clear_store(out_dir)
            os.replace(tmp, target)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if no_space(err):
                raise _no_space_error(target, err) from err
            raise
        _write_import_meta(out_dir, ids, failed, spec, dim, provenance)
    return EmbeddingStore.open(out_dir)


def adopt_matrix(
    out_dir: str | os.PathLike,
    npy_file: str | os.PathLike,
    filepaths: Sequence[str],
    *,
    spec: str,
    rows: np.ndarray | None = None,
    failed: pd.DataFrame | None = None,
    provenance: dict[str, Any] | None = None,
    wait: bool = False,
    chunk_rows: int = IMPORT_CHUNK_ROWS,
) -> EmbeddingStore:
    """`write_store` from a float32 `.npy` file written elsewhere, which is consumed.

    When `rows` is every row in order, the file is L2-normalised in place chunk by chunk and moved into the
    store (no second copy on disk); otherwise its `rows` are streamed into a new matrix and the file removed.
    The result equals `write_store(out_dir, np.load(npy_file)[rows], filepaths, ...)` bit for bit.
    """
    out_dir, npy_file = Path(out_dir), Path(npy_file)
    check_writable(out_dir)
    source = np.load(npy_file, mmap_mode="r+")
    ids = [str(p) for p in filepaths]
    in_place = (
        source.ndim == 2
        and source.dtype == np.float32
        and (rows is None or np.array_equal(rows, np.arange(len(source))))
        and os.stat(npy_file).st_dev == os.stat(out_dir).st_dev  # a move, not a copy
    )
    if not in_place:
        store = write_store(
            out_dir, source, ids, spec=spec, failed=failed, provenance=provenance, wait=wait, rows=rows,
            chunk_rows=chunk_rows,
        )  # fmt: skip
        del source
        npy_file.unlink()
        return store
    rows = _check_import(source, ids, None)
    norms = _row_norms(source, rows, ids, chunk_rows)  # every row checked before the file is changed
    dim = int(source.shape[1])
    with store_lock(out_dir, wait=wait):
        _normalise_into(source, rows, norms, source, chunk_rows)
        source.flush()
        del source
        with open(npy_file, "rb+") as handle:
            os.fsync(handle.fileno())
        clear_store(out_dir)
        os.replace(npy_file, out_dir / EMBEDDINGS_FILE)
        _fsync_dir(out_dir)
        _write_import_meta(out_dir, ids, failed, spec, dim, provenance)
    return EmbeddingStore.open(out_dir)


def _write_import_meta(
    out_dir: Path,
    ids: list[str],
    failed: pd.DataFrame | None,
    spec: str,
    dim: int,
    provenance: dict[str, Any] | None,
) -> None:
    """ids.csv, failed.csv, then provenance.json (the completion marker) of an imported store."""
    from datetime import UTC, datetime

    failed = pd.DataFrame({"filepath": [], "error": []}) if failed is None else failed[["filepath", "error"]]
    write_csv(out_dir / IDS_FILE, pd.DataFrame({"filepath": ids}, dtype=object))
    write_csv(out_dir / FAILED_FILE, failed.astype(object))
    meta = {
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "dim": dim,
        "normalisation": "L2 (each row unit length; float32)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **(provenance or {}),
        "rows": len(ids),
        "failed": len(failed),
    }
    write_json(out_dir / PROVENANCE_FILE, meta)
