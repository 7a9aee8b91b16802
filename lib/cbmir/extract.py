"""Feature extraction: manifest images -> a resumable embedding store (`cbmir.store`), and single queries.

`extract_embeddings` embeds every manifest row in fixed chunks of rows; each finished chunk is committed to
the store folder, so a killed run started again skips the finished chunks and gives the same store as an
uninterrupted one. One run at a time holds the store's writer lock. Two engines run the same chunk plan
into the same store: `local` (a torch DataLoader in this process, the default) and `ray` (`cbmir.extract_ray`:
Ray Data across the GPUs and nodes of a cluster; Ray is imported only when that engine is asked for). `embed_images` embeds a few images (a
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
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cbmir import store as S
from cbmir.decode_cache import DecodeCache, geometry_key
from cbmir.installed import library_versions
from cbmir.precision import (
    EncoderOutputError,
    PrecisionRunner,
    decode_threads,
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
ENGINES = ("local", "ray")
COMPILE_MODES = ("auto", "on", "off")  # = cbmir.accelerate.COMPILE_MODES (not imported: keeps torch lazy)
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
    A transform with `accepts_grey` gets greyscale sources as one-channel "L" images (see `cbmir.images`).
    """

    pool: Executor | None = None  # set for inline decoding: a batch's images are decoded by its threads

    def __init__(
        self,
        root: str | os.PathLike,
        paths: Sequence[str],
        transform: Any,
        frames: Sequence[int | None] | None = None,
        cache: DecodeCache | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.paths = list(paths)
        self.transform = transform
        self.frames = list(frames) if frames is not None else [None] * len(self.paths)
        self.grey = bool(getattr(transform, "accepts_grey", False))
        self.cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, rows: Sequence[int]) -> list[tuple[int, torch.Tensor, str]]:
        """One batch (torch's DataLoader calls this when present): decoded on `pool`'s threads, in row order."""
        if self.pool is None:
            return [self[row] for row in rows]
        return list(self.pool.map(self.__getitem__, rows))

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor, str]:
        from cbmir.images import ImageLoadError, load_image

        path = contained_path(self.root, self.paths[row])
        if path is None:
            return row, _failure_sentinel(), f"{OUTSIDE_ROOT} {self.root} (not opened)"
        entry = pixels = None
        if self.cache is not None and path.is_file():
            entry = self.cache.entry(path, self.frames[row])
            pixels = self.cache.read(entry)
        if pixels is None:
            try:
                image = load_image(path, frame=self.frames[row], grey=self.grey)
            except ImageLoadError as err:
                return row, _failure_sentinel(), err.reason
        try:
            if entry is None:
                tensor = self.transform(image)
            else:
                if pixels is None:
                    pixels = self.transform.geometry(image)
                    with suppress(OSError):  # a full or read-only cache only costs the next decode
                        self.cache.write(entry, pixels)
                tensor = self.transform.finish(pixels)
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
    engine: str = "local",
    ray_address: str | None = None,
    compile: str = "auto",
    decode_cache: str | os.PathLike | None = None,
) -> EmbeddingStore:
    """Embed every manifest image into the store at `out_dir` and return it (resumable; see module doc).

    `encoder` is an `Encoder` or a spec string for `cbmir.models.load_encoder` (loaded only when work
    remains). `batch_size` defaults to the preset's (`preset_batch_size`); a batch that runs out of memory is
    halved and retried, and the sizes that ran are recorded in provenance (`batch_size`). `precision` (fp32,
    bf16, fp16; default bf16 if `bf16` else fp32) is resolved by `cbmir.precision.resolve_precision`;
    `num_workers` defaults to `cbmir.precision.default_workers()` (0: each batch decoded inline on a thread per core). Rows are the readable images in manifest order; unreadable ones go to `failed.csv`. An optional
    manifest column `frame` picks a frame of multi-frame files. A complete store for the same ids and spec
    is reused unless `redo`; a damaged one is rebuilt. Another run holding the store raises `StoreError`
    naming it, unless `wait` (then this call queues behind it). An output folder that cannot be written is
    reported before any work starts (a complete store in a read-only folder is still reused).

    `engine` is "local" or "ray" (`cbmir.extract_ray.run_chunks_on_ray`: connects to `ray_address`, else
    `RAY_ADDRESS`, else starts a local Ray; `device` None then means a GPU actor per GPU of the cluster). Both
    engines write the same chunks, so a store begun by one can be finished by the other. `compile` ("auto", "on",
    "off") is `cbmir.accelerate`'s torch.compile choice on the CPU (local engine; "auto" compiles only when the
    run is long enough to pay for it).

    `decode_cache`: a folder where the decoded, resized pixels are kept per resize setting
    (`cbmir.decode_cache`), so that the next model that resizes alike reads them instead of decoding the files
    again; the vectors are the same either way. Provenance records it (`decode_cache`).
    """
    if engine not in ENGINES:
        raise ValueError(f"parameter 'engine' is {engine!r}; allowed {list(ENGINES)}")
    if compile not in COMPILE_MODES:
        raise ValueError(f"parameter 'compile' is {compile!r}; allowed {list(COMPILE_MODES)}")
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
            batch_size, num_workers, bf16, device, chunk_size, precision, engine, ray_address, compile,
            decode_cache,
        )  # fmt: skip


def _decode_cache(folder: str | os.PathLike | None, transform: Any) -> tuple[DecodeCache | None, Any]:
    """The cache for this transform (or None) and what provenance says of it."""
    if folder is None:
        return None, "off"
    if geometry_key(transform) is None:
        return (
            None,
            f"not used: the {type(transform).__name__} transform does not split into resize and the rest",
        )
    try:
        cache = DecodeCache(folder, transform)
    except OSError as err:
        raise ValueError(
            f"parameter 'decode_cache' is {str(folder)!r}: cannot use it as a folder ({err})"
        ) from err
    return cache, cache.describe()


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
    engine: str = "local",
    ray_address: str | None = None,
    compile: str = "auto",
    decode_cache: str | os.PathLike | None = None,
) -> EmbeddingStore:
    if engine == "ray":
        # the cluster's workers pick their device; the driver only needs the model's metadata and weights
        precision = requested_precision(precision, bf16)
        load_device = "cpu"
    else:
        device = resolve_device(device)
        precision = resolve_precision(precision, bf16, device)
        load_device = device
    if isinstance(encoder, str):
        from cbmir.models import load_encoder

        encoder = load_encoder(encoder, checkpoint=checkpoint, device=load_device)
    cache, cache_record = _decode_cache(decode_cache, encoder.transform)
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
    if engine == "ray":
        from cbmir.extract_ray import run_chunks_on_ray

        ran = run_chunks_on_ray(
            data_root, ids, frames, encoder, todo, plan, chunks, batch_size, device, ray_address, cache
        )
    else:
        n_todo = sum(min(chunk_size, n_rows - k * chunk_size) for k in todo)
        from cbmir.accelerate import large_tensors_on_heap

        heap = large_tensors_on_heap() if device.startswith("cpu") else nullcontext("")
        with heap as allocation:
            runner = PrecisionRunner(
                encoder, device, bf16, precision, compile=compile, n_images=n_todo, batch_size=batch_size
            )
            loader: dict[str, Any] = {}
            if todo:
                dataset = ManifestImages(data_root, ids, encoder.transform, frames, cache)
                loader = _run_chunks(dataset, todo, runner, plan, chunks, batch_size, num_workers, device)
        ran = {
            "engine": "local",
            "precision": runner.precision,
            "dtype": runner.dtype_name,  # fp32 / bf16 / fp16: what ran
            "tf32": runner.tf32,
            "num_workers": int(num_workers),
            "loader": loader,  # prefetch_factor and pin_memory (host-memory limited)
            "speed": runner.speed,  # what cbmir.accelerate ran on the CPU
            "allocation": allocation or "the C library's default",
            "device": device,
            "batch_size": runner.batch_record(batch_size),  # this run's; a resumed run records its own
        }
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
        "manifest_rows": n_rows,
        "manifest_ids_sha256": ids_hash,
        "chunk_size": int(chunk_size),
        "decode_cache": cache_record,
        **ran,  # the engine and what it ran: precision, dtype, tf32, device, workers, speed, batch sizes
    }
    S.assemble(out_dir, chunks, ids, plan, provenance)
    return EmbeddingStore.open(out_dir)


def requested_precision(precision: str | None, bf16: bool) -> str:
    """The precision asked for (`precision`, else bf16 if `bf16`, else fp32), checked by name only; the device
    that runs it resolves it (`resolve_precision`)."""
    from cbmir.precision import PRECISIONS, PrecisionError

    wanted = precision or ("bf16" if bf16 else "fp32")
    if wanted not in PRECISIONS:
        raise PrecisionError(f"parameter 'precision' is {wanted!r}; allowed {list(PRECISIONS)}")
    return wanted


def batch_bounds(n_rows: int, chunk_size: int, todo: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """Manifest rows [lo, hi) of each forward batch of the chunks `todo`, in order; a batch never crosses a
    chunk. Every engine forms exactly these batches, so each image meets the same batch neighbours."""
    bounds = []
    for k in todo:
        lo, hi = S.chunk_bounds(n_rows, chunk_size, k)
        bounds.extend((s, min(s + batch_size, hi)) for s in range(lo, hi, batch_size))
    return bounds


class ChunkWriter:
    """Collects embedded rows and failures per chunk and writes each chunk the moment it is complete.

    Batches may arrive in any order (the Ray engine's do); the chunk of a row is `row // chunk_size`. Rows whose
    vector is not finite become failures. `seconds` of a chunk is the wall time since the previous chunk was
    written (or since the start), so the chunks' seconds add up to the run's wall time.
    """

    def __init__(self, chunks: Path, plan: dict[str, Any], todo: Sequence[int]) -> None:
        self.chunks, self.chunk_size, self.dim = chunks, plan["chunk_size"], plan["dim"]
        self.left = {
            k: hi - lo for k in todo for lo, hi in [S.chunk_bounds(plan["n_rows"], self.chunk_size, k)]
        }
        self.parts: dict[int, tuple[list[int], list[np.ndarray], list[tuple[int, str]]]] = {}
        self.last = time.perf_counter()

    def add(
        self, rows: Sequence[int], vectors: np.ndarray | None, failures: Sequence[tuple[int, str]]
    ) -> None:
        """One batch: `rows` embedded as `vectors` (`[len(rows), D]`), `failures` as (row, error)."""
        if not len(rows) and not len(failures):
            return
        first = int(rows[0]) if len(rows) else int(failures[0][0])
        k = first // self.chunk_size
        if k not in self.left:
            raise StoreError(f"rows {first}.. belong to chunk {k}, which is not pending in this run")
        kept, vecs, failed = self.parts.setdefault(k, ([], [], []))
        if len(rows):
            finite = np.isfinite(vectors).all(axis=1)
            vecs.append(vectors[finite])
            kept.extend(int(r) for r, keep in zip(rows, finite, strict=True) if keep)
            failed.extend((int(r), NON_FINITE) for r, keep in zip(rows, finite, strict=True) if not keep)
        failed.extend((int(r), str(e)) for r, e in failures)
        self.left[k] -= len(rows) + len(failures)
        if self.left[k] == 0:
            now = time.perf_counter()
            S.write_chunk(S.chunk_path(self.chunks, k), kept, vecs, failed, self.dim, now - self.last)
            self.last = now
            del self.left[k], self.parts[k]

    def finish(self) -> None:
        """`StoreError` if a chunk is still incomplete (its batches never all arrived)."""
        if self.left:
            raise StoreError(f"extraction stopped before chunk {min(self.left)} was complete")


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

    batches = [
        list(range(lo, hi)) for lo, hi in batch_bounds(plan["n_rows"], plan["chunk_size"], todo, batch_size)
    ]
    settings = loader_settings(
        num_workers,
        batch_size * _item_bytes(dataset, batches),
        device.startswith("cuda"),
        host_memory_bytes(),
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate, **settings
    )
    threads = decode_threads() if num_workers == 0 else 1
    settings["decode"] = (
        f"{num_workers} DataLoader worker(s), beside the forward pass"
        if num_workers
        else f"inline, between forward passes, on {threads} thread(s)"
    )
    writer = ChunkWriter(chunks, plan, todo)
    bar = tqdm(total=sum(map(len, batches)), desc=f"embed {plan['spec']}", unit="img", initial=0)
    with bar, ThreadPoolExecutor(threads) if threads > 1 else nullcontext() as pool:
        dataset.pool = pool
        try:
            for ok_rows, batch, batch_failures in loader:
                writer.add(ok_rows, None if batch is None else runner.embed(batch), batch_failures)
                bar.update(len(ok_rows) + len(batch_failures))
        finally:
            dataset.pool = None
    writer.finish()
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
