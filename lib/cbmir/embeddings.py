"""Feature extraction into a resumable, memory-mappable embedding store (ARCHITECTURE.md §2).

A store is one folder per (model, dataset):

- `embeddings.npy`   float32 `[N, D]`, rows L2-normalised (open with `np.load(..., mmap_mode="r")`)
- `ids.csv`          column `filepath`: the manifest filepath of each row, in row order
- `provenance.json`  spec, embedding rule, weights hash, preprocessing, library versions, date, ...
- `failed.csv`       `filepath,error` for each image that could not be read (skipped, never silent)

While running, results go to `chunks/chunk_NNNNNN.npz` (fixed manifest row ranges, each written
atomically) next to `chunks/plan.json`; a killed run started again skips the finished chunks. The final
files are assembled atomically and `provenance.json`, written last, marks the store complete.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cbmir.errors import CbmirError

if TYPE_CHECKING:
    import torch

    from cbmir.models.base import Encoder

FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.csv"
PROVENANCE_FILE = "provenance.json"
FAILED_FILE = "failed.csv"
CHUNKS_DIR = "chunks"
PLAN_FILE = "plan.json"
NON_FINITE = "encoder output is not finite (NaN/inf)"
_CHUNK_RE = re.compile(r"^chunk_(\d{6})\.npz$")
_VERSIONED = ("torch", "torchvision", "timm", "open_clip_torch", "transformers", "numpy", "pydicom", "pillow")


class StoreError(CbmirError, RuntimeError):
    """An embedding store or its partial results do not match the requested run."""


# --------------------------------------------------------------------------------------------- the store
@dataclass
class EmbeddingStore:
    """A finished store: `embeddings` (read-only memmap), `ids`, `provenance`, `failed`."""

    path: Path
    embeddings: np.ndarray
    ids: np.ndarray
    provenance: dict[str, Any]
    failed: pd.DataFrame = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> EmbeddingStore:
        """Open a complete store; raise `StoreError` naming the folder if it is missing or incomplete."""
        path = Path(path)
        if not is_complete(path):
            raise StoreError(f"{path} is not a complete embedding store (missing or unfinished run)")
        embeddings = np.load(path / EMBEDDINGS_FILE, mmap_mode="r")
        ids = _read_ids(path / IDS_FILE)
        provenance = json.loads((path / PROVENANCE_FILE).read_text())
        failed = _read_failed(path / FAILED_FILE)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
            raise StoreError(
                f"{path}: {EMBEDDINGS_FILE} has shape {embeddings.shape} but {IDS_FILE} has {len(ids)} ids"
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


def is_complete(path: str | os.PathLike) -> bool:
    """True when `path` holds a finished store whose files agree with each other."""
    path = Path(path)
    names = (EMBEDDINGS_FILE, IDS_FILE, PROVENANCE_FILE, FAILED_FILE)
    if not all((path / name).is_file() for name in names):
        return False
    try:
        provenance = json.loads((path / PROVENANCE_FILE).read_text())
        shape = np.load(path / EMBEDDINGS_FILE, mmap_mode="r").shape
    except (OSError, ValueError):
        return False
    return len(shape) == 2 and provenance.get("rows") == shape[0]


def _read_ids(path: Path) -> np.ndarray:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "filepath" not in frame.columns:
        raise StoreError(f"{path} has no 'filepath' column")
    return frame["filepath"].to_numpy(dtype=object)


def _read_failed(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frame.astype(object) if len(frame) else pd.DataFrame({"filepath": [], "error": []}, dtype=object)


# ------------------------------------------------------------------------------------------ atomic files
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _atomic_open(target: Path, mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary file beside `target`, fsync it, then `os.replace` it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _write_json(target: Path, payload: dict[str, Any]) -> None:
    with _atomic_open(target, "w") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.write("\n")


def _write_csv(target: Path, frame: pd.DataFrame) -> None:
    with _atomic_open(target, "w") as handle:
        frame.to_csv(handle, index=False)


def _remove_stale_temps(folder: Path) -> None:
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


# ------------------------------------------------------------------------------------------------ dataset
def _failure_sentinel() -> torch.Tensor:
    import torch

    return torch.empty(0)


class ManifestImages:
    """`torch` map-style dataset over manifest rows: `(row, tensor, error)`; unreadable -> empty tensor + error."""

    def __init__(
        self, paths: Sequence[str], transform: Any, frames: Sequence[int | None] | None = None
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.frames = list(frames) if frames is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor, str]:
        from cbmir.images import ImageLoadError, load_image

        try:
            image = load_image(self.paths[row], frame=self.frames[row])
        except ImageLoadError as err:
            return row, _failure_sentinel(), err.reason
        try:
            tensor = self.transform(image)
        except Exception as err:
            raise RuntimeError(
                f"preprocessing failed for {self.paths[row]}: {type(err).__name__}: {err}"
            ) from err
        return row, tensor, ""


def _collate(
    batch: list[tuple[int, torch.Tensor, str]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    import torch

    ok = [(row, tensor) for row, tensor, error in batch if not error]
    failures = [(row, error) for row, _, error in batch if error]
    stacked = torch.stack([tensor for _, tensor in ok]) if ok else None
    return [row for row, _ in ok], stacked, failures


# -------------------------------------------------------------------------------------------------- plan
def _ids_sha256(ids: Sequence[str], frames: Sequence[int | None]) -> str:
    digest = hashlib.sha256()
    for path, frame in zip(ids, frames, strict=True):
        digest.update(f"{path}\t{'' if frame is None else frame}\n".encode())
    return digest.hexdigest()


def _chunk_bounds(n_rows: int, chunk_size: int, index: int) -> tuple[int, int]:
    return index * chunk_size, min((index + 1) * chunk_size, n_rows)


def _chunk_path(chunks: Path, index: int) -> Path:
    return chunks / f"chunk_{index:06d}.npz"


def _done_chunks(chunks: Path, n_chunks: int) -> set[int]:
    done = set()
    for entry in chunks.iterdir() if chunks.is_dir() else ():
        match = _CHUNK_RE.match(entry.name)
        if match and int(match.group(1)) < n_chunks:
            done.add(int(match.group(1)))
    return done


def _check_plan(chunks: Path, plan: dict[str, Any]) -> None:
    """Create `plan.json`, or check that the existing one describes the same run."""
    plan_path = chunks / PLAN_FILE
    if not plan_path.exists():
        _write_json(plan_path, plan)
        return
    try:
        existing = json.loads(plan_path.read_text())
    except ValueError as err:
        raise StoreError(f"{plan_path} is unreadable ({err}); remove {chunks} or pass redo=True") from err
    keys = (
        "format_version",
        "spec",
        "checkpoint",
        "manifest_ids_sha256",
        "n_rows",
        "chunk_size",
        "bf16",
        "dim",
    )
    diffs = [f"{k}: {existing.get(k)!r} -> {plan.get(k)!r}" for k in keys if existing.get(k) != plan.get(k)]
    if diffs:
        raise StoreError(
            f"partial results in {chunks} were made for a different run ({'; '.join(diffs)}). "
            "Pass redo=True (--redo) to discard them, or choose another output folder."
        )


# --------------------------------------------------------------------------------------------- extraction
def _resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in (*_VERSIONED, "cbmir"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _manifest_columns(manifest: pd.DataFrame) -> tuple[list[str], list[int | None]]:
    if "filepath" not in manifest.columns:
        raise ValueError("manifest has no 'filepath' column")
    ids = [str(v) for v in manifest["filepath"].tolist()]
    duplicated = pd.Index(ids)[pd.Index(ids).duplicated()].unique().tolist()
    if duplicated:
        shown = ", ".join(duplicated[:5]) + (", ..." if len(duplicated) > 5 else "")
        raise ValueError(
            f"manifest has {len(duplicated)} duplicated filepath(s) ({shown}); store ids must be unique"
        )
    frames: list[int | None] = [None] * len(ids)
    if "frame" in manifest.columns:
        frames = [None if pd.isna(v) or v == "" else int(v) for v in manifest["frame"].tolist()]
    return ids, frames


def _reusable(out_dir: Path, spec: str, checkpoint: str | None, ids_hash: str) -> bool:
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


def _clear_store(out_dir: Path) -> None:
    """Remove our own files (completion marker first), never anything else in the folder."""
    for name in (PROVENANCE_FILE, EMBEDDINGS_FILE, IDS_FILE, FAILED_FILE):
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    shutil.rmtree(out_dir / CHUNKS_DIR, ignore_errors=True)


class _Runner:
    """The encoder at the requested precision, embedding one batch at a time into L2-normalised float32 rows.

    bf16 means autocast on CUDA, and bf16 weights (+ autocast) on the CPU, which is faster there (see
    benchmarks/bench_bf16.py). If a module rejects bf16 weights, it falls back to fp32 weights + autocast.
    The caller's module is never cast: bf16 weights live in a copy.
    """

    def __init__(self, encoder: Encoder, device: str, bf16: bool) -> None:
        import torch

        self.encoder, self.device, self.bf16 = encoder, device, bf16
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.module, self.dtype = encoder.module.to(device).eval(), torch.float32
        self.precision = "autocast" if bf16 else "fp32"
        self.speed: dict = {}
        if self.device_type == "cpu":  # [speed, issue 15] CPU rewrites (fusion, SDPA, NHWC, bf16) in a copy
            from cbmir.accelerate import optimise_for_inference

            fast, self.speed = optimise_for_inference(encoder, device, "bf16" if bf16 else "fp32")
            self.module = fast.module
            if bf16 and any(step.startswith("bf16 weights") for step in self.speed["steps"]):
                self.precision = "weights+autocast"

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        with (
            torch.inference_mode(),
            torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            return self.module(batch.to(device=self.device, dtype=self.dtype, non_blocking=True)).float()

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        import torch

        try:
            out = self._forward(batch)
        except RuntimeError as err:
            if self.precision != "weights+autocast":
                raise
            warnings.warn(
                f"{self.encoder.spec}: bf16 weights failed ({err}); using fp32 weights with bf16 autocast",
                stacklevel=2,
            )
            self.module, self.dtype, self.precision = self.encoder.module.eval(), torch.float32, "autocast"
            out = self._forward(batch)
        if out.ndim != 2 or out.shape != (batch.shape[0], self.encoder.dim):
            raise StoreError(
                f"encoder {self.encoder.spec!r} returned shape {tuple(out.shape)} for a batch of "
                f"{batch.shape[0]}; expected [B, {self.encoder.dim}] (Encoder.dim)"
            )
        return torch.nn.functional.normalize(out, dim=1).cpu().numpy().astype(np.float32, copy=False)


def _write_chunk(
    path: Path,
    rows: list[int],
    vectors: list[np.ndarray],
    failures: list[tuple[int, str]],
    dim: int,
    seconds: float = float("nan"),
) -> None:
    order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
    matrix = np.concatenate(vectors, axis=0)[order] if vectors else np.zeros((0, dim), np.float32)
    failures = sorted(failures)
    with _atomic_open(path) as handle:
        np.savez(
            handle,
            rows=np.asarray(rows, dtype=np.int64)[order],
            embeddings=np.ascontiguousarray(matrix, dtype=np.float32),
            failed_rows=np.asarray([r for r, _ in failures], dtype=np.int64),
            failed_errors=np.asarray([e for _, e in failures], dtype=str),
            seconds=np.float64(seconds),  # wall time spent on this chunk (decode + forward)
        )


def _read_chunk(path: Path, lo: int, hi: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Load some arrays of one chunk file; `StoreError` naming the file if it is unreadable or wrong."""
    try:
        with np.load(path, allow_pickle=False) as data:
            chunk = {key: data[key] for key in keys}
    except (OSError, ValueError, KeyError) as err:
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


def _assemble(
    out_dir: Path, chunks: Path, ids: list[str], plan: dict[str, Any], provenance: dict[str, Any]
) -> None:
    """Build the final files from the chunks (each atomically, provenance last), then remove the chunks.

    Streams chunk by chunk into a memory-mapped temporary `.npy`, so memory stays at one chunk.
    """
    n_rows, chunk_size, dim = plan["n_rows"], plan["chunk_size"], plan["dim"]
    bounds = [_chunk_bounds(n_rows, chunk_size, k) for k in range(math.ceil(n_rows / chunk_size))]
    paths = [_chunk_path(chunks, k) for k in range(len(bounds))]
    meta = [
        _read_chunk(p, lo, hi, ("rows", "failed_rows", "failed_errors"))
        for p, (lo, hi) in zip(paths, bounds, strict=True)
    ]
    rows = np.concatenate([m["rows"] for m in meta]) if meta else np.zeros(0, np.int64)
    fd, tmp = tempfile.mkstemp(prefix=f".{EMBEDDINGS_FILE}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(rows), dim))
        start = 0
        for path, (lo, hi), m in zip(paths, bounds, meta, strict=True):
            part = _read_chunk(path, lo, hi, ("embeddings",))["embeddings"]
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
        os.replace(tmp, out_dir / EMBEDDINGS_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _write_csv(out_dir / IDS_FILE, pd.DataFrame({"filepath": [ids[r] for r in rows]}, dtype=object))
    failed = [
        (int(r), str(e)) for m in meta for r, e in zip(m["failed_rows"], m["failed_errors"], strict=True)
    ]
    failed_frame = pd.DataFrame(
        {"filepath": [ids[r] for r, _ in failed], "error": [e for _, e in failed]}, dtype=object
    )
    _write_csv(out_dir / FAILED_FILE, failed_frame)
    seconds = sum(_chunk_seconds(p) for p in paths)
    timing = {
        "seconds": seconds,
        "images_per_second": n_rows / seconds if seconds > 0 else None,
    }
    _write_json(out_dir / PROVENANCE_FILE, {**provenance, **timing, "rows": len(rows), "failed": len(failed)})
    shutil.rmtree(chunks, ignore_errors=True)


def extract_embeddings(
    manifest: pd.DataFrame,
    data_root: str | os.PathLike,
    encoder: Encoder | str,
    out_dir: str | os.PathLike,
    batch_size: int = 32,
    num_workers: int = 2,
    bf16: bool = False,
    device: str | None = None,
    chunk_size: int = 1024,
    redo: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> EmbeddingStore:
    """Embed every manifest image into the store at `out_dir` and return it (resumable; see module doc).

    `encoder` is an `Encoder` or a spec string for `cbmir.models.load_encoder` (loaded only when work
    remains). Rows are the readable images in manifest order; unreadable ones go to `failed.csv`. An optional
    manifest column `frame` picks a frame of multi-frame files. A complete store for the same ids and spec
    is reused unless `redo`.
    """
    if batch_size < 1 or chunk_size < 1 or num_workers < 0:
        raise ValueError(
            f"need batch_size >= 1, chunk_size >= 1, num_workers >= 0; got {batch_size}, {chunk_size}, {num_workers}"
        )
    out_dir, data_root = Path(out_dir), Path(data_root)
    checkpoint = None if checkpoint is None else str(checkpoint)
    spec = encoder if isinstance(encoder, str) else encoder.spec
    ids, frames = _manifest_columns(manifest)
    ids_hash = _ids_sha256(ids, frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    if redo:
        _clear_store(out_dir)
    elif _reusable(out_dir, spec, checkpoint, ids_hash):
        shutil.rmtree(out_dir / CHUNKS_DIR, ignore_errors=True)  # leftovers of a run killed after completion
        return EmbeddingStore.open(out_dir)

    device = _resolve_device(device)
    if isinstance(encoder, str):
        from cbmir.models import load_encoder

        encoder = load_encoder(encoder, checkpoint=checkpoint, device=device)
    chunks = out_dir / CHUNKS_DIR
    chunks.mkdir(exist_ok=True)
    _remove_stale_temps(chunks)
    _remove_stale_temps(out_dir)
    n_rows = len(ids)
    plan = {
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "checkpoint": checkpoint,
        "manifest_ids_sha256": ids_hash,
        "n_rows": n_rows,
        "chunk_size": int(chunk_size),
        "bf16": bool(bf16),
        "dim": int(encoder.dim),
    }
    _check_plan(chunks, plan)
    n_chunks = math.ceil(n_rows / chunk_size)
    done = _done_chunks(chunks, n_chunks)
    todo = [k for k in range(n_chunks) if k not in done]
    runner = _Runner(encoder, device, bf16)
    if todo:
        dataset = ManifestImages([str(data_root / p) for p in ids], encoder.transform, frames)
        _run_chunks(dataset, todo, runner, plan, chunks, batch_size, num_workers, device)
    provenance = {
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "checkpoint": checkpoint,
        "embedding_rule": encoder.embedding_rule,
        "dim": int(encoder.dim),
        "normalisation": "L2 (each row unit length; float32)",
        "weights_sha256": encoder.provenance.get("weights_sha256"),
        "preprocessing": encoder.provenance.get("preprocessing"),
        "encoder": encoder.provenance,
        "library_versions": _library_versions(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "bf16": bool(bf16),
        "precision": runner.precision,
        "speed": runner.speed,  # [speed, issue 15] what cbmir.accelerate ran
        "device": device,
        "manifest_rows": n_rows,
        "manifest_ids_sha256": ids_hash,
        "chunk_size": int(chunk_size),
    }
    _assemble(out_dir, chunks, ids, plan, provenance)
    return EmbeddingStore.open(out_dir)


def _run_chunks(
    dataset: ManifestImages,
    todo: list[int],
    runner: _Runner,
    plan: dict[str, Any],
    chunks: Path,
    batch_size: int,
    num_workers: int,
    device: str,
) -> None:
    """Embed the pending chunks in order; batches never cross a chunk, each chunk is written when complete."""
    import torch
    from tqdm.auto import tqdm

    n_rows, chunk_size, dim = plan["n_rows"], plan["chunk_size"], plan["dim"]
    batches: list[list[int]] = []
    for k in todo:
        lo, hi = _chunk_bounds(n_rows, chunk_size, k)
        batches.extend(list(range(s, min(s + batch_size, hi))) for s in range(lo, hi, batch_size))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.startswith("cuda"),
    )
    pending = {k: _chunk_bounds(n_rows, chunk_size, k) for k in todo}
    rows: list[int] = []
    vectors: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    current = todo[0]
    total = sum(hi - lo for lo, hi in pending.values())
    chunk_start = time.perf_counter()
    with tqdm(total=total, desc=f"embed {plan['spec']}", unit="img", initial=0) as bar:
        for ok_rows, batch, batch_failures in loader:
            if batch is not None:
                out = runner(batch)
                finite = np.isfinite(out).all(axis=1)
                vectors.append(out[finite])
                rows.extend(r for r, keep in zip(ok_rows, finite, strict=True) if keep)
                failures.extend((r, NON_FINITE) for r, keep in zip(ok_rows, finite, strict=True) if not keep)
            failures.extend(batch_failures)
            bar.update(len(ok_rows) + len(batch_failures))
            lo, hi = pending[current]
            if len(rows) + len(failures) == hi - lo:
                now = time.perf_counter()
                _write_chunk(_chunk_path(chunks, current), rows, vectors, failures, dim, now - chunk_start)
                rows, vectors, failures, chunk_start = [], [], [], now
                position = todo.index(current)
                current = todo[position + 1] if position + 1 < len(todo) else -1
    if current != -1:
        raise StoreError(f"extraction stopped before chunk {current} was complete")


# ---------------------------------------------------------------------------------------------------- CLI
def _cmd_embed(args: argparse.Namespace) -> int:
    try:
        from cbmir.manifest import read_manifest
    except ModuleNotFoundError:  # the manifest stage is optional here: a plain CSV works too
        read_manifest = None
    paths = args.manifest
    if read_manifest is not None:
        manifest = read_manifest(paths if len(paths) > 1 else paths[0])
    else:
        manifest = pd.concat([pd.read_csv(p, keep_default_na=False) for p in paths], ignore_index=True)
    if args.splits:
        wanted = [s.strip() for s in args.splits.split(",") if s.strip()]
        if "split" not in manifest.columns:
            raise SystemExit("--splits given but the manifest has no 'split' column")
        manifest = manifest[manifest["split"].isin(wanted)].reset_index(drop=True)
    store = extract_embeddings(
        manifest,
        args.data_root,
        args.model,
        args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        bf16=args.bf16,
        device=args.device,
        chunk_size=args.chunk_size,
        redo=args.redo,
        checkpoint=args.checkpoint,
    )
    print(f"{store.path}: {len(store)} rows x {store.dim} dims, {len(store.failed)} failed")
    if len(store.failed):
        print(f"unreadable images are listed in {store.path / FAILED_FILE}", file=sys.stderr)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir embed`."""
    p = subparsers.add_parser("embed", help="embed manifest images into a resumable embedding store")
    p.add_argument(
        "--model", required=True, help="model spec (preset, timm:NAME, open_clip:ARCH@TAG, hf:REPO)"
    )
    p.add_argument("--manifest", required=True, nargs="+", help="manifest CSV file(s)")
    p.add_argument("--data-root", required=True, help="folder the manifest filepaths are relative to")
    p.add_argument("--out", required=True, help="store folder (work/<config>/embeddings/<model-slug>)")
    p.add_argument("--checkpoint", default=None, help="local weights file for the model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--chunk-size", type=int, default=1024, help="rows per resumable chunk")
    p.add_argument("--bf16", action="store_true", help="bfloat16 (autocast on GPU, bf16 weights on CPU)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--redo", action="store_true", help="discard an existing store or partial run")
    p.add_argument("--splits", default=None, help="comma-separated splits to embed, e.g. train,test")
    p.set_defaults(func=_cmd_embed)
