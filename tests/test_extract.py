"""Extraction into a store: layout, reuse, failures, and exact resumption after a kill at any point."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cbmir import store as S
from cbmir.extract import extract_embeddings
from cbmir.models.base import Encoder
from cbmir.store import EmbeddingStore, StoreError, is_complete
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _embed_worker import DIM, tiny_encoder  # noqa: E402

WORKER = Path(__file__).parent / "_embed_worker.py"
N_IMAGES = 60


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """60 small random PNGs plus a corrupt and a missing file in the middle of the manifest."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    names = []
    for i in range(N_IMAGES):
        name = f"sub/img_{i:03d}.png"
        (root / "sub").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    names[20:20] = ["corrupt.png", "missing/nowhere.png"]
    return root, pd.DataFrame({"filepath": names, "split": ["train", "test"] * (len(names) // 2)})


def _readable(manifest: pd.DataFrame) -> list[str]:
    return [p for p in manifest["filepath"] if p not in ("corrupt.png", "missing/nowhere.png")]


@pytest.fixture(scope="module")
def reference(images: tuple[Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> EmbeddingStore:
    """An uninterrupted run."""
    root, manifest = images
    out = tmp_path_factory.mktemp("reference")
    return extract_embeddings(
        manifest, root, tiny_encoder(), out, batch_size=8, num_workers=0, chunk_size=1000
    )


def _assert_same(store: EmbeddingStore, reference: EmbeddingStore) -> None:
    assert store.ids.tolist() == reference.ids.tolist()
    np.testing.assert_allclose(np.asarray(store.embeddings), np.asarray(reference.embeddings), atol=1e-5)
    pd.testing.assert_frame_equal(store.failed, reference.failed)
    assert not (store.path / S.CHUNKS_DIR).exists()


def test_store_layout_and_round_trip(reference: EmbeddingStore, images: tuple[Path, pd.DataFrame]) -> None:
    _, manifest = images
    path = reference.path
    assert sorted(p.name for p in path.iterdir() if p.name.startswith(".")) == [S.LOCK_FILE]  # released
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) == [
        "embeddings.npy",
        "failed.csv",
        "ids.csv",
        "provenance.json",
    ]
    raw = np.load(path / "embeddings.npy", mmap_mode="r")
    assert isinstance(raw, np.memmap) and raw.dtype == np.float32 and raw.shape == (N_IMAGES, DIM)
    assert pd.read_csv(path / "ids.csv")["filepath"].tolist() == _readable(manifest)

    store = EmbeddingStore.open(path)
    assert isinstance(store.embeddings, np.memmap) and not store.embeddings.flags.writeable
    np.testing.assert_allclose(np.linalg.norm(store.embeddings, axis=1), 1.0, atol=1e-5)
    assert store.ids.tolist() == _readable(manifest) and len(store) == N_IMAGES and store.dim == DIM
    prov = store.provenance
    assert prov["spec"] == "tiny-test" and prov["rows"] == N_IMAGES and prov["failed"] == 2
    assert prov["embedding_rule"] == "mean-pooled conv -> linear" and prov["preprocessing"] == "resize 16"
    assert prov["library_versions"]["torch"] == torch.__version__.split("+")[0]
    assert {"date", "bf16", "device", "weights_sha256", "manifest_ids_sha256"} <= set(prov)
    assert prov["seconds"] > 0 and prov["images_per_second"] == pytest.approx(
        prov["manifest_rows"] / prov["seconds"], rel=1e-3
    )
    assert is_complete(path)


def test_embeddings_match_direct_encoding(
    reference: EmbeddingStore, images: tuple[Path, pd.DataFrame]
) -> None:
    root, _ = images
    ids = ["sub/img_007.png", "sub/img_042.png"]
    direct = tiny_encoder().embed_images([Image.open(root / p) for p in ids]).numpy()
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    np.testing.assert_allclose(reference.embeddings[reference.rows_for(ids)], direct, atol=1e-5)


def test_unreadable_images_are_listed_and_skipped(reference: EmbeddingStore) -> None:
    failed = reference.failed.set_index("filepath")["error"]
    assert list(failed.index) == ["corrupt.png", "missing/nowhere.png"]
    assert "corrupt" in failed["corrupt.png"] and "not found" in failed["missing/nowhere.png"]
    assert "corrupt.png" not in set(reference.ids)


def test_rows_for(reference: EmbeddingStore) -> None:
    rows = reference.rows_for(["sub/img_010.png", "sub/img_000.png"])
    assert rows.dtype == np.int64 and rows.tolist() == [10, 0]
    with pytest.raises(KeyError, match=r"2 filepath\(s\).*corrupt\.png.*nope\.png.*1 of them failed to load"):
        reference.rows_for(["sub/img_001.png", "corrupt.png", "nope.png"])


def test_complete_store_is_reused_not_recomputed(
    images: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = images
    encoder = tiny_encoder()
    first = extract_embeddings(manifest, root, encoder, tmp_path, num_workers=0, chunk_size=16)
    before = (tmp_path / "embeddings.npy").stat().st_mtime_ns

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not run (or even load) for a complete store")

    encoder.module.forward = forbidden
    monkeypatch.setattr("cbmir.models.load_encoder", forbidden, raising=False)
    again = extract_embeddings(manifest, root, encoder, tmp_path, num_workers=0, chunk_size=16)
    by_spec = extract_embeddings(manifest, root, "tiny-test", tmp_path, num_workers=0)
    assert (tmp_path / "embeddings.npy").stat().st_mtime_ns == before
    assert again.ids.tolist() == by_spec.ids.tolist() == first.ids.tolist()

    with pytest.raises(StoreError, match="another run.*spec.*redo=True"):
        extract_embeddings(manifest, root, "other-model", tmp_path, num_workers=0)
    with pytest.raises(StoreError, match="manifest rows differ.*redo=True"):
        extract_embeddings(manifest.iloc[:10], root, encoder, tmp_path, num_workers=0)

    redone = extract_embeddings(manifest.iloc[:10], root, tiny_encoder(), tmp_path, num_workers=0, redo=True)
    assert len(redone) == 10 and redone.provenance["manifest_rows"] == 10


def test_partial_run_with_other_plan_asks_for_redo(images: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, manifest = images
    encoder = tiny_encoder()
    with pytest.raises(_Crash):
        with _crash_after_replace(3):
            extract_embeddings(manifest, root, encoder, tmp_path, num_workers=0, chunk_size=10)
    assert len(list((tmp_path / "chunks").glob("chunk_*.npz"))) == 2
    with pytest.raises(StoreError, match=r"chunk_size: 10 -> 7.*redo=True"):
        extract_embeddings(manifest, root, encoder, tmp_path, num_workers=0, chunk_size=7)
    assert len(list((tmp_path / "chunks").glob("chunk_*.npz"))) == 2  # nothing lost
    store = extract_embeddings(manifest, root, encoder, tmp_path, num_workers=0, chunk_size=7, redo=True)
    assert len(store) == N_IMAGES


def test_workers_preserve_manifest_order(
    images: tuple[Path, pd.DataFrame], reference: EmbeddingStore, tmp_path: Path
) -> None:
    root, manifest = images
    store = extract_embeddings(
        manifest, root, tiny_encoder(), tmp_path, batch_size=3, num_workers=2, chunk_size=7
    )
    _assert_same(store, reference)


@pytest.mark.parametrize("threads", [1, 3])
def test_inline_decoding_on_threads_gives_the_same_store_as_workers(
    images: tuple[Path, pd.DataFrame],
    reference: EmbeddingStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
) -> None:
    import threading

    import cbmir.extract

    root, manifest = images
    monkeypatch.setattr(cbmir.extract, "decode_threads", lambda: threads)
    encoder = tiny_encoder()
    seen: set[int] = set()
    transform = encoder.transform

    def recording(image: Image.Image) -> torch.Tensor:
        seen.add(threading.get_ident())
        time.sleep(0.002)  # long enough for the pool to hand rows to more than one thread
        return transform(image)

    encoder.transform = recording
    store = extract_embeddings(manifest, root, encoder, tmp_path, batch_size=6, num_workers=0, chunk_size=7)
    _assert_same(store, reference)  # same rows, order, vectors and failures (the corrupt and missing files)
    pool_threads = seen - {threading.get_ident()}  # the main thread reads one image to size the batches
    assert len(pool_threads) > 1 if threads > 1 else not pool_threads
    decode = json.loads((store.path / "provenance.json").read_text())["loader"]["decode"]
    assert decode == f"inline, between forward passes, on {threads} thread(s)"


def test_bf16_on_cpu_is_close_and_leaves_the_encoder_untouched(
    images: tuple[Path, pd.DataFrame], reference: EmbeddingStore, tmp_path: Path
) -> None:
    root, manifest = images
    encoder = tiny_encoder()
    store = extract_embeddings(manifest, root, encoder, tmp_path, num_workers=0, bf16=True, device="cpu")
    assert store.embeddings.dtype == np.float32 and store.provenance["bf16"] is True
    assert store.provenance["precision"] == "weights+autocast"
    assert next(encoder.module.parameters()).dtype == torch.float32
    cosine = np.sum(np.asarray(store.embeddings) * np.asarray(reference.embeddings), axis=1)
    assert cosine.min() > 0.99


def test_non_finite_outputs_are_failures(images: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, manifest = images
    encoder = tiny_encoder()
    forward = encoder.module.forward

    def poisoned(x: torch.Tensor) -> torch.Tensor:
        out = forward(x)
        out[0] = float("nan")
        return out

    encoder.module.forward = poisoned
    store = extract_embeddings(manifest.iloc[:8], root, encoder, tmp_path, batch_size=4, num_workers=0)
    assert store.failed["filepath"].tolist() == ["sub/img_000.png", "sub/img_004.png"]
    assert store.failed["error"].str.contains("not finite").all() and len(store) == 6


def test_bad_arguments_raise_clear_errors(images: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, manifest = images
    with pytest.raises(ValueError, match="duplicated filepath.*img_000"):
        extract_embeddings(pd.concat([manifest, manifest.iloc[:1]]), root, tiny_encoder(), tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        extract_embeddings(manifest, root, tiny_encoder(), tmp_path, batch_size=0)
    with pytest.raises(StoreError, match="not a complete embedding store"):
        EmbeddingStore.open(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------- kill and resume
class _Crash(BaseException):
    """Stands in for a kill: nothing after it runs, and no code catches it."""


class _crash_after_replace:  # noqa: N801 - used like a function
    """Raise `_Crash` right after the n-th `os.replace` (the file has landed; nothing else happens)."""

    def __init__(self, n: int) -> None:
        self.n, self.count, self.real = n, 0, os.replace

    def __call__(self, *args: object, **kwargs: object) -> None:
        self.real(*args, **kwargs)
        self.count += 1
        if self.count == self.n:
            raise _Crash

    def __enter__(self) -> _crash_after_replace:
        os.replace = self
        return self

    def __exit__(self, *exc: object) -> None:
        os.replace = self.real


def test_crash_after_every_atomic_write_resumes_exactly(
    images: tuple[Path, pd.DataFrame], reference: EmbeddingStore, tmp_path: Path
) -> None:
    """Every file landing (plan, each chunk, each final file) is a point where a run can die."""
    root, manifest = images
    encoder = tiny_encoder()
    with _crash_after_replace(10**9) as counter:
        extract_embeddings(manifest, root, encoder, tmp_path / "count", num_workers=0, chunk_size=10)
    n_writes = counter.count
    assert n_writes == 1 + 7 + 4  # plan, 7 chunks of 10 rows, embeddings/ids/failed/provenance
    for n in range(1, n_writes + 1):
        out = tmp_path / f"crash_{n}"
        with pytest.raises(_Crash), _crash_after_replace(n):
            extract_embeddings(manifest, root, encoder, out, num_workers=0, chunk_size=10)
        assert is_complete(out) == (n == n_writes)
        _assert_same(
            extract_embeddings(manifest, root, encoder, out, num_workers=0, chunk_size=10), reference
        )


def _run_worker(manifest_csv: Path, root: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(WORKER), str(manifest_csv), str(root), str(out), "5", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _n_chunks(out: Path) -> int:
    return len(list((out / "chunks").glob("chunk_*.npz"))) if (out / "chunks").is_dir() else 0


@pytest.mark.slow
def test_sigkilled_subprocess_resumes_to_the_uninterrupted_result(
    images: tuple[Path, pd.DataFrame], reference: EmbeddingStore, tmp_path: Path
) -> None:
    """SIGKILL a real extraction once 1, 3 and 5 chunks are on disk, then inside the final assembly."""
    root, manifest = images
    manifest_csv = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_csv, index=False)
    out = tmp_path / "store"
    for target in (1, 3, 5):
        proc = _run_worker(manifest_csv, root, out, "--sleep", "0.05")
        deadline = time.monotonic() + 60
        while _n_chunks(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        assert _n_chunks(out) >= target and not is_complete(out)
    # 13 chunks of 5 rows: the remaining chunks, then embeddings/ids/failed/provenance land; die right after
    # provenance.json (complete, chunks not yet removed). Every other landing is covered in-process above.
    proc = _run_worker(manifest_csv, root, out, "--die-after-replace", str(13 - _n_chunks(out) + 4))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert is_complete(out) and (out / "chunks").is_dir()  # finished, but killed before cleaning up
    proc = _run_worker(manifest_csv, root, out)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert stdout.decode().splitlines() == ["60 2", "ray not imported"]  # the local engine never imports Ray
    _assert_same(EmbeddingStore.open(out), reference)
    assert json.loads((out / "provenance.json").read_text())["chunk_size"] == 5


class _Fp32Only(torch.nn.Module):
    """Stands in for wrapped runtimes (ONNX, custom kernels) that accept float32 only."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or self.head.weight.dtype != torch.float32:
            raise RuntimeError("this module runs in float32 only")
        return self.head(x.mean(dim=(2, 3)))


def test_bf16_falls_back_to_autocast_when_weights_are_rejected(
    images: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    root, manifest = images
    encoder = tiny_encoder()
    encoder.module = _Fp32Only()
    with pytest.warns(UserWarning, match="bf16 weights failed.*fp32 weights with bf16 autocast"):
        store = extract_embeddings(
            manifest.iloc[:6], root, encoder, tmp_path, num_workers=0, bf16=True, device="cpu"
        )
    assert store.provenance["precision"] == "autocast" and len(store) == 6


def test_wrong_embedding_width_stops_with_a_clear_error(
    images: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    root, manifest = images
    encoder = tiny_encoder()
    encoder.dim = DIM + 1
    with pytest.raises(StoreError, match=r"returned shape \(4, 6\).*expected \[B, 7\] \(Encoder.dim\)"):
        extract_embeddings(manifest.iloc[:8], root, encoder, tmp_path, batch_size=4, num_workers=0)


# ------------------------------------------------------------------------------------ hostile input
def test_paths_that_leave_the_data_root_are_failed_and_never_opened(
    images: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cbmir.images

    root, manifest = images
    data = tmp_path / "data"
    data.mkdir()
    secret = tmp_path / "secret.png"  # a perfectly readable image outside the data root
    Image.open(root / "sub/img_000.png").save(secret)
    (data / "inside.png").symlink_to(root / "sub/img_001.png")  # a symlink out of the root: refused too
    (data / "escape.png").symlink_to(secret)
    Image.open(root / "sub/img_002.png").save(data / "real.png")
    (data / "alias.png").symlink_to(data / "real.png")  # a symlink that stays inside: fine
    names = ["real.png", "escape.png", "../secret.png", str(secret), "alias.png", "inside.png"]
    opened: list[str] = []
    real_load = cbmir.images.load_image

    def spy(path: object, frame: int | None = None, **options: object) -> Image.Image:
        opened.append(str(path))
        return real_load(path, frame=frame, **options)

    monkeypatch.setattr(cbmir.images, "load_image", spy)
    store = extract_embeddings(
        pd.DataFrame({"filepath": names}), data, tiny_encoder(), tmp_path / "s", num_workers=0
    )
    assert store.ids.tolist() == ["real.png", "alias.png"]
    failed = store.failed.set_index("filepath")["error"]
    assert sorted(failed.index) == sorted(["escape.png", "../secret.png", str(secret), "inside.png"])
    assert failed.str.contains("outside the data root").all()
    assert str(secret) not in opened and not any("img_001" in p for p in opened)
    np.testing.assert_allclose(store.embeddings[0], store.embeddings[1], atol=1e-6)  # alias = real


def test_unwritable_output_folder_is_reported_before_any_work(
    images: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = images

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("no model may load before the output folder is checked")

    monkeypatch.setattr("cbmir.models.load_encoder", forbidden, raising=False)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StoreError, match=r"output folder .*a-file/store cannot be written"):
        extract_embeddings(manifest, root, "tiny-test", tmp_path / "a-file" / "store")
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "readonly"
        locked.mkdir(mode=0o500)
        with pytest.raises(StoreError, match="readonly cannot be written.*Permission"):
            extract_embeddings(manifest, root, "tiny-test", locked)


def test_a_second_run_on_the_same_store_names_the_holder(
    images: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    root, manifest = images
    out = tmp_path / "store"
    out.mkdir()
    with S.store_lock(out):
        with pytest.raises(
            StoreError, match=rf"embedding store {out} is being written by process {os.getpid()}"
        ):
            extract_embeddings(manifest, root, tiny_encoder(), out, num_workers=0)
    assert not (out / S.CHUNKS_DIR).exists()  # refused before any work


@pytest.mark.parametrize("damage", ["embeddings", "ids", "provenance"])
def test_truncated_store_files_are_rebuilt_not_loaded(
    images: tuple[Path, pd.DataFrame], reference: EmbeddingStore, tmp_path: Path, damage: str
) -> None:
    root, manifest = images
    out = tmp_path / "store"
    extract_embeddings(manifest, root, tiny_encoder(), out, num_workers=0, chunk_size=16)
    target = (
        out / {"embeddings": S.EMBEDDINGS_FILE, "ids": S.IDS_FILE, "provenance": S.PROVENANCE_FILE}[damage]
    )
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StoreError):
        EmbeddingStore.open(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = extract_embeddings(manifest, root, tiny_encoder(), out, num_workers=0, chunk_size=16)
    _assert_same(again, reference)


# --------------------------------------------------------------------------------------- full disk
class _NoSpaceAt:
    """Make the n-th write point fail with ENOSPC: an fsync of a regular file (every landing file has one)
    or the up-front allocation of the embedding matrix."""

    def __init__(self, n: int) -> None:
        self.n, self.count = n, 0
        self.real_fsync, self.real_alloc = os.fsync, os.posix_fallocate

    def _hit(self) -> None:
        self.count += 1
        if self.count == self.n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fsync(self, fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self._hit()
        self.real_fsync(fd)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        self._hit()
        self.real_alloc(fd, offset, length)

    def __enter__(self) -> _NoSpaceAt:
        os.fsync, os.posix_fallocate = self.fsync, self.fallocate
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync, os.posix_fallocate = self.real_fsync, self.real_alloc


def test_no_space_at_every_write_point_keeps_what_was_committed(
    images: tuple[Path, pd.DataFrame], reference: EmbeddingStore, tmp_path: Path
) -> None:
    root, manifest = images
    encoder = tiny_encoder()
    with _NoSpaceAt(10**9) as counter:
        extract_embeddings(manifest, root, encoder, tmp_path / "count", num_workers=0, chunk_size=10)
    n_points = counter.count
    assert n_points == 1 + 7 + 1 + 4  # plan, 7 chunks, matrix allocation, embeddings/ids/failed/provenance
    for n in range(1, n_points + 1):
        out = tmp_path / f"full_{n}"
        with pytest.raises(StoreError, match=rf"cannot write {out}/.*: no space left on device") as info:
            with _NoSpaceAt(n):
                extract_embeddings(manifest, root, encoder, out, num_workers=0, chunk_size=10)
        assert "free some space and run again" in str(info.value)
        assert not is_complete(out)
        assert not list(out.rglob(".*.tmp"))  # the failed file's temporary is gone; committed files stay
        committed = len(list((out / "chunks").glob("chunk_*.npz"))) if (out / "chunks").is_dir() else 0
        assert committed == min(max(n - 2, 0), 7)
        _assert_same(
            extract_embeddings(manifest, root, encoder, out, num_workers=0, chunk_size=10), reference
        )


# ------------------------------------------------------------------------------------------- queries
def test_a_query_is_embedded_exactly_as_the_store(images: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    from cbmir.extract import embed_images
    from cbmir.images import load_image

    root, manifest = images
    store = extract_embeddings(
        manifest, root, tiny_encoder(), tmp_path, num_workers=0, bf16=True, device="cpu"
    )
    ids = ["sub/img_007.png", "sub/img_042.png"]
    query = embed_images(tiny_encoder(), [load_image(root / p) for p in ids], bf16=True, device="cpu")
    stored = np.asarray(store.embeddings[store.rows_for(ids)])
    np.testing.assert_allclose(np.sum(query * stored, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(query, stored, atol=1e-6)
    fp32 = embed_images(tiny_encoder(), [load_image(root / p) for p in ids], bf16=False, device="cpu")
    assert np.abs(fp32 - stored).max() > 1e-4  # the precision matters: a query must use the store's


# ------------------------------------------------------------------------------------ batch sizes and OOM
def _oom_above(limit: int, error: type[BaseException], message: str) -> Encoder:
    """The tiny encoder, except that a forward pass over more than `limit` images raises `error(message)`."""
    encoder = tiny_encoder()
    forward = encoder.module.forward

    def limited(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > limit:
            raise error(message)
        return forward(x)

    encoder.module.forward = limited
    return encoder


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (torch.OutOfMemoryError, "CUDA out of memory. Tried to allocate 96.00 GiB"),
        (RuntimeError, "DefaultCPUAllocator: not enough memory: you tried to allocate; out of memory"),
        (MemoryError, ""),
    ],
)
def test_out_of_memory_halves_the_batch_and_gives_the_normal_store(
    images: tuple[Path, pd.DataFrame], tmp_path: Path, error: type[BaseException], message: str
) -> None:
    root, manifest = images
    normal = extract_embeddings(
        manifest, root, tiny_encoder(), tmp_path / "normal", batch_size=8, num_workers=0, chunk_size=10
    )
    with pytest.warns(UserWarning, match="out of memory at batch size 8; retrying at 4"):
        store = extract_embeddings(
            manifest, root, _oom_above(3, error, message), tmp_path / "oom", batch_size=8, num_workers=0,
            chunk_size=10,
        )  # fmt: skip
    _assert_same(store, normal)
    np.testing.assert_array_equal(np.asarray(store.embeddings), np.asarray(normal.embeddings))
    record = store.provenance["batch_size"]
    assert record["requested"] == 8 and record["out_of_memory_retries"] == 2  # 8 -> 4 -> 2, then kept at 2
    assert set(record["ran"]) == {"2"} and sum(record["ran"].values()) == N_IMAGES // 2
    ran = normal.provenance["batch_size"]["ran"]
    assert sum(int(k) * v for k, v in ran.items()) == N_IMAGES and ran["8"] == 5  # 8 + 2 per chunk of 10
    assert normal.provenance["batch_size"]["out_of_memory_retries"] == 0


def test_out_of_memory_at_batch_size_one_and_other_errors_are_raised(
    images: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    from cbmir.precision import PrecisionRunner

    runner = PrecisionRunner(tiny_encoder(), "cpu", bf16=False)
    runner.module = _oom_above(0, torch.OutOfMemoryError, "CUDA out of memory").module
    with pytest.warns(UserWarning, match="retrying at 1"), pytest.raises(torch.OutOfMemoryError):
        runner.embed(torch.zeros(4, 3, 16, 16))
    assert runner.oom_retries == 2 and not runner.batch_sizes_run
    root, manifest = images
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not an out-of-memory error: no retry
        extract_embeddings(
            manifest.iloc[:4], root, _oom_above(1, RuntimeError, "shape mismatch"), tmp_path / "b",
            batch_size=4, num_workers=0,
        )  # fmt: skip


def test_batch_size_defaults_to_the_preset(images: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    from cbmir.extract import DEFAULT_BATCH_SIZE, preset_batch_size
    from cbmir.models.registry import resolve_spec

    assert preset_batch_size("sam-vit-b") == preset_batch_size("medsam-vit-b") == 8
    assert preset_batch_size("clip-vit-l14") == resolve_spec("clip-vit-l14").batch_size > 8
    assert preset_batch_size("tiny-test") == DEFAULT_BATCH_SIZE
    root, manifest = images
    store = extract_embeddings(manifest.iloc[:4], root, tiny_encoder(), tmp_path, num_workers=0)
    assert store.provenance["batch_size"]["requested"] == DEFAULT_BATCH_SIZE


def test_greyscale_files_reach_a_grey_aware_transform_as_one_channel(tmp_path: Path) -> None:
    """Only a transform with `accepts_grey` gets "L" images, and its tensors are those of the RGB images."""
    from cbmir.extract import ManifestImages
    from cbmir.models.transforms import Preprocess

    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(tmp_path / "g.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    names = ["g.png", "g.jpg", "c.png"]
    pre = Preprocess({"resize": 16, "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3], "std": [0.2] * 3})

    class Spy:
        def __init__(self, accepts_grey: bool) -> None:
            self.accepts_grey, self.modes = accepts_grey, []

        def __call__(self, image: Image.Image) -> torch.Tensor:
            self.modes.append(image.mode)
            return pre(image)

    for accepts, modes in ((True, ["L", "L", "RGB"]), (False, ["RGB"] * 3)):
        spy = Spy(accepts)
        items = [ManifestImages(tmp_path, names, spy)[row] for row in range(3)]
        assert spy.modes == modes
        for (_, tensor, error), name in zip(items, names, strict=True):
            assert not error
            torch.testing.assert_close(
                tensor, pre(Image.open(tmp_path / name).convert("RGB")), rtol=0, atol=0
            )
