"""Feature extraction: manifest images -> a resumable embedding store (`cbmir.store`), and single queries.

`extract_embeddings` embeds every manifest row in fixed chunks of rows; each finished chunk is committed to
the store folder, so a killed run started again skips the finished chunks and gives the same store as an
uninterrupted one. One run at a time holds the store's writer lock. `embed_images` embeds a few images (a
query) through the same precision runner and normalisation, so a query is embedded exactly as the store.

Every image path is resolved (symlinks included) and must stay inside the data root; one that escapes is
listed in `failed.csv` and never opened.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cbmir import store as S
from cbmir.installed import library_versions
from cbmir.precision import (
    EncoderOutputError,
    PrecisionRunner,
    default_workers,
    host_memory_bytes,
    loader_settings,
    resolve_device,
    resolve_precision,
)
from cbmir.store import EmbeddingStore, StoreError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from cbmir.models.base import Encoder

DEFAULT_BATCH_SIZE = 32  # for specs that are not presets (e.g. an `Encoder` built by hand)
NON_FINITE = "encoder output is not finite (NaN/inf)"
OUTSIDE_ROOT = "outside the data root"


# ------------------------------------------------------------------------------------------------ dataset
def _failure_sentinel() -> torch.Tensor:
    import torch

    return torch.empty(0)


def contained_path(root: Path, filepath: str) -> Path | None:
    """`root / filepath` with symlinks resolved, or None when it leaves `root` (itself resolved)."""
    resolved = (root / filepath).resolve()
    return resolved if resolved.is_relative_to(root.resolve()) else None


class ManifestImages:
    """`torch` map-style dataset over manifest rows: `(row, tensor, error)`; unreadable -> empty tensor + error.

    `paths` are relative to `root`; each is resolved and must stay inside it, or the row fails unopened.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        paths: Sequence[str],
        transform: Any,
        frames: Sequence[int | None] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.paths = list(paths)
        self.transform = transform
        self.frames = list(frames) if frames is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor, str]:
        from cbmir.images import ImageLoadError, load_image

        path = contained_path(self.root, self.paths[row])
        if path is None:
            return row, _failure_sentinel(), f"{OUTSIDE_ROOT} {self.root} (not opened)"
        try:
            image = load_image(path, frame=self.frames[row])
        except ImageLoadError as err:
            return row, _failure_sentinel(), err.reason
        try:
            tensor = self.transform(image)
        except Exception as err:
            raise RuntimeError(f"preprocessing failed for {path}: {type(err).__name__}: {err}") from err
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


# --------------------------------------------------------------------------------------------- extraction
def extract_embeddings(
    manifest: pd.DataFrame,
    data_root: str | os.PathLike,
    encoder: Encoder | str,
    out_dir: str | os.PathLike,
    batch_size: int | None = None,
    num_workers: int | None = None,
    bf16: bool = False,
    device: str | None = None,
    chunk_size: int = 1024,
    redo: bool = False,
    checkpoint: str | os.PathLike | None = None,
    wait: bool = False,
    precision: str | None = None,
) -> EmbeddingStore:
    """Embed every manifest image into the store at `out_dir` and return it (resumable; see module doc).

    `encoder` is an `Encoder` or a spec string for `cbmir.models.load_encoder` (loaded only when work
    remains). `batch_size` defaults to the preset's (`preset_batch_size`); a batch that runs out of memory is
    halved and retried, and the sizes that ran are recorded in provenance (`batch_size`). `precision` (fp32,
    bf16, fp16; default bf16 if `bf16` else fp32) is resolved by `cbmir.precision.resolve_precision`;
    `num_workers` defaults to `cbmir.precision.default_workers()`. Rows are the readable images in manifest order; unreadable ones go to `failed.csv`. An optional
    manifest column `frame` picks a frame of multi-frame files. A complete store for the same ids and spec
    is reused unless `redo`; a damaged one is rebuilt. Another run holding the store raises `StoreError`
    naming it, unless `wait` (then this call queues behind it). An output folder that cannot be written is
    reported before any work starts (a complete store in a read-only folder is still reused).
    """
    spec = encoder if isinstance(encoder, str) else encoder.spec
    if batch_size is None:
        batch_size = preset_batch_size(spec)
    if num_workers is None:
        num_workers = default_workers()
    if batch_size < 1 or chunk_size < 1 or num_workers < 0:
        raise ValueError(
            f"need batch_size >= 1, chunk_size >= 1, num_workers >= 0; got {batch_size}, {chunk_size}, {num_workers}"
        )
    out_dir, data_root = Path(out_dir), Path(data_root)
    checkpoint = None if checkpoint is None else str(checkpoint)
    ids, frames = _manifest_columns(manifest)
    ids_hash = _ids_sha256(ids, frames)
    try:
        S.check_writable(out_dir)
    except StoreError:
        if not redo and out_dir.is_dir() and S.check_reusable(out_dir, spec, checkpoint, ids_hash):
            return EmbeddingStore.open(out_dir)  # e.g. published embeddings on a read-only share
        raise
    with S.store_lock(out_dir, wait=wait):
        if redo:
            S.clear_store(out_dir)
        else:
            reused = _reuse(out_dir, spec, checkpoint, ids_hash)
            if reused is not None:
                return reused
        return _extract(
            manifest, ids, frames, ids_hash, data_root, encoder, out_dir, spec, checkpoint,
            batch_size, num_workers, bf16, device, chunk_size, precision,
        )  # fmt: skip


def preset_batch_size(spec: str) -> int:
    """The preset's batch size for `spec`, or `DEFAULT_BATCH_SIZE` when the spec is no preset."""
    from cbmir.models.registry import PresetError, resolve_spec

    try:
        return resolve_spec(spec).batch_size
    except PresetError:
        return DEFAULT_BATCH_SIZE


def _reuse(out_dir: Path, spec: str, checkpoint: str | None, ids_hash: str) -> EmbeddingStore | None:
    """The complete store for this run, or None after removing final files that are unfinished or damaged."""
    if S.check_reusable(out_dir, spec, checkpoint, ids_hash):
        try:
            store = EmbeddingStore.open(out_dir)
        except StoreError as err:
            warnings.warn(f"rebuilding a damaged embedding store: {err}", stacklevel=3)
        else:
            shutil.rmtree(
                out_dir / S.CHUNKS_DIR, ignore_errors=True
            )  # leftovers of a run killed after completion
            return store
    S.clear_final_files(
        out_dir
    )  # truncated or half-assembled files are rebuilt from the chunks, never loaded
    return None


def _extract(
    manifest: pd.DataFrame,
    ids: list[str],
    frames: list[int | None],
    ids_hash: str,
    data_root: Path,
    encoder: Encoder | str,
    out_dir: Path,
    spec: str,
    checkpoint: str | None,
    batch_size: int,
    num_workers: int,
    bf16: bool,
    device: str | None,
    chunk_size: int,
    precision: str | None = None,
) -> EmbeddingStore:
    device = resolve_device(device)
    precision = resolve_precision(precision, bf16, device)
    if isinstance(encoder, str):
        from cbmir.models import load_encoder

        encoder = load_encoder(encoder, checkpoint=checkpoint, device=device)
    chunks = out_dir / S.CHUNKS_DIR
    chunks.mkdir(exist_ok=True)
    S.remove_stale_temps(chunks)
    S.remove_stale_temps(out_dir)
    n_rows = len(ids)
    plan = {
        "format_version": S.FORMAT_VERSION,
        "spec": spec,
        "checkpoint": checkpoint,
        "manifest_ids_sha256": ids_hash,
        "n_rows": n_rows,
        "chunk_size": int(chunk_size),
        "bf16": bool(bf16),
        "precision": precision,
        "dim": int(encoder.dim),
    }
    S.check_plan(chunks, plan)
    n_chunks = math.ceil(n_rows / chunk_size)
    done = S.done_chunks(chunks, n_chunks)
    todo = [k for k in range(n_chunks) if k not in done]
    runner = PrecisionRunner(encoder, device, bf16, precision)
    loader: dict[str, Any] = {}
    if todo:
        dataset = ManifestImages(data_root, ids, encoder.transform, frames)
        loader = _run_chunks(dataset, todo, runner, plan, chunks, batch_size, num_workers, device)
    provenance = {
        "format_version": S.FORMAT_VERSION,
        "spec": spec,
        "checkpoint": checkpoint,
        "embedding_rule": encoder.embedding_rule,
        "dim": int(encoder.dim),
        "normalisation": "L2 (each row unit length; float32)",
        "weights_sha256": encoder.provenance.get("weights_sha256"),
        "preprocessing": encoder.provenance.get("preprocessing"),
        "encoder": encoder.provenance,
        "library_versions": library_versions(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "bf16": bool(bf16),
        "precision": runner.precision,
        "dtype": runner.dtype_name,  # fp32 / bf16 / fp16: what ran
        "tf32": runner.tf32,
        "num_workers": int(num_workers),
        "loader": loader,  # prefetch_factor and pin_memory (host-memory limited)
        "speed": runner.speed,  # what cbmir.accelerate ran on the CPU
        "device": device,
        "manifest_rows": n_rows,
        "manifest_ids_sha256": ids_hash,
        "chunk_size": int(chunk_size),
        "batch_size": runner.batch_record(batch_size),  # this run's; a resumed run records its own
    }
    S.assemble(out_dir, chunks, ids, plan, provenance)
    return EmbeddingStore.open(out_dir)


def _run_chunks(
    dataset: ManifestImages,
    todo: list[int],
    runner: PrecisionRunner,
    plan: dict[str, Any],
    chunks: Path,
    batch_size: int,
    num_workers: int,
    device: str,
) -> dict[str, Any]:
    """Embed the pending chunks in order; batches never cross a chunk, each chunk is written when complete.

    Returns the DataLoader settings used (`loader_settings`)."""
    import torch
    from tqdm.auto import tqdm

    n_rows, chunk_size, dim = plan["n_rows"], plan["chunk_size"], plan["dim"]
    batches: list[list[int]] = []
    for k in todo:
        lo, hi = S.chunk_bounds(n_rows, chunk_size, k)
        batches.extend(list(range(s, min(s + batch_size, hi))) for s in range(lo, hi, batch_size))
    settings = loader_settings(
        num_workers,
        batch_size * _item_bytes(dataset, batches),
        device.startswith("cuda"),
        host_memory_bytes(),
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate, **settings
    )
    pending = {k: S.chunk_bounds(n_rows, chunk_size, k) for k in todo}
    rows: list[int] = []
    vectors: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    current = todo[0]
    total = sum(hi - lo for lo, hi in pending.values())
    chunk_start = time.perf_counter()
    with tqdm(total=total, desc=f"embed {plan['spec']}", unit="img", initial=0) as bar:
        for ok_rows, batch, batch_failures in loader:
            if batch is not None:
                out = runner.embed(batch)
                finite = np.isfinite(out).all(axis=1)
                vectors.append(out[finite])
                rows.extend(r for r, keep in zip(ok_rows, finite, strict=True) if keep)
                failures.extend((r, NON_FINITE) for r, keep in zip(ok_rows, finite, strict=True) if not keep)
            failures.extend(batch_failures)
            bar.update(len(ok_rows) + len(batch_failures))
            lo, hi = pending[current]
            if len(rows) + len(failures) == hi - lo:
                now = time.perf_counter()
                S.write_chunk(S.chunk_path(chunks, current), rows, vectors, failures, dim, now - chunk_start)
                rows, vectors, failures, chunk_start = [], [], [], now
                position = todo.index(current)
                current = todo[position + 1] if position + 1 < len(todo) else -1
    if current != -1:
        raise StoreError(f"extraction stopped before chunk {current} was complete")
    return settings


def _item_bytes(dataset: ManifestImages, batches: list[list[int]]) -> int:
    """Bytes of one preprocessed image (the first readable one of the first batch; 0 if none is readable)."""
    for row in batches[0] if batches else []:
        _, tensor, error = dataset[row]
        if not error:
            return tensor.numel() * tensor.element_size()
    return 0


# -------------------------------------------------------------------------------------------- queries
def embed_images(
    encoder: Encoder,
    images: Sequence[Image.Image],
    *,
    bf16: bool = False,
    device: str | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """Embed PIL images (e.g. queries) exactly as `extract_embeddings` does: `[n, D]` float32 unit rows.

    Use the store's `dtype` and `device` (its provenance records both) as `precision` and `device` to get the
    vectors the store holds.
    `batch_size` defaults to the preset's; out-of-memory batches are halved as in extraction.
    """
    import torch

    batch_size = batch_size or preset_batch_size(encoder.spec)
    if not images:
        raise ValueError("parameter 'images' is empty")
    runner = PrecisionRunner(encoder, resolve_device(device), bf16, precision)
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([encoder.transform(image) for image in images[start : start + batch_size]])
        out.append(runner.embed(batch))
    vectors = np.concatenate(out)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise EncoderOutputError(f"image {int(np.flatnonzero(bad)[0])}: {NON_FINITE}")
    return vectors
