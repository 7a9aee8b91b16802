"""The store's readers (EmbeddingStore, ManifestVectors) and its one-writer lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cbmir import store as S
from cbmir.store import (
    EmbeddingStore,
    ManifestVectors,
    StoreError,
    StoreLockedError,
    adopt_matrix,
    is_complete,
    open_stores,
    write_store,
)

HOLDER = Path(__file__).parent / "_lock_holder.py"


def _toy_store(
    path: Path, n: int = 20, seed: int = 0, prefix: str = "a"
) -> tuple[EmbeddingStore, np.ndarray]:
    rng = np.random.default_rng(seed)
    fps = np.array([f"{prefix}/{i:03d}.png" for i in range(n)], dtype=object)
    order = rng.permutation(n)[:-2]  # shuffled rows; the last two images failed
    lost = np.setdiff1d(np.arange(n), order)
    failed = pd.DataFrame({"filepath": fps[lost], "error": "corrupt"})
    return write_store(path, rng.normal(size=(len(order), 5)), fps[order], spec="toy", failed=failed), fps


def test_vectors_for_matches_a_per_row_lookup(tmp_path: Path) -> None:
    store, fps = _toy_store(tmp_path / "s")
    manifest = pd.DataFrame({"filepath": np.concatenate([fps[::-1], ["never/stored.png"]])})
    vec = store.vectors_for(manifest)
    ids = list(store.ids)
    expected = [ids.index(p) if p in ids else -1 for p in manifest["filepath"]]  # slow reference
    assert vec.store_row.dtype == np.int64 and vec.store_row.tolist() == expected
    assert (
        vec.failed_rows.tolist() == [r for r, e in enumerate(expected) if e < 0] and len(vec.failed_rows) == 3
    )
    assert isinstance(vec.matrix, np.memmap) and vec.dim == 5 and len(vec) == len(manifest)
    rows = np.array([5, 0, 20, 3])
    assert vec.present(rows).tolist() == [r for r in rows if expected[r] >= 0]
    ok = vec.present(rows)
    np.testing.assert_array_equal(vec.take(ok), np.asarray(store.embeddings)[[expected[r] for r in ok]])
    bad = int(vec.failed_rows[0])
    with pytest.raises(ValueError, match=f"'rows': manifest row {bad} has no embedding"):
        vec.take([bad, *ok])
    with pytest.raises(ValueError, match="row 99 outside the 21 manifest rows"):
        vec.present([99])


def test_several_stores_stack_in_order_and_must_not_overlap(tmp_path: Path) -> None:
    a, fa = _toy_store(tmp_path / "a", n=10, seed=1, prefix="a")
    b, fb = _toy_store(tmp_path / "b", n=12, seed=2, prefix="b")
    vec = open_stores([tmp_path / "a", tmp_path / "b"], np.concatenate([fb, fa]))
    for r, p in enumerate(np.concatenate([fb, fa])):
        src = b if p.startswith("b/") else a
        if p in set(src.ids):
            np.testing.assert_array_equal(vec.take([r])[0], src.embeddings[src.rows_for([p])[0]])
        else:
            assert vec.store_row[r] == -1
    with pytest.raises(StoreError, match="appears twice"):
        open_stores([tmp_path / "a", tmp_path / "a"], fa)
    assert isinstance(vec, ManifestVectors)


def test_write_store_round_trip_and_damage_is_detected(tmp_path: Path) -> None:
    store, _ = _toy_store(tmp_path / "s")
    np.testing.assert_allclose(np.linalg.norm(store.embeddings, axis=1), 1, atol=1e-6)
    assert store.provenance["rows"] == 18 and len(store.failed) == 2 and S.is_complete(store.path)
    emb = tmp_path / "s" / S.EMBEDDINGS_FILE
    emb.write_bytes(emb.read_bytes()[:-7])  # truncated matrix
    assert not S.is_complete(store.path)
    with pytest.raises(StoreError, match="not a complete embedding store"):
        EmbeddingStore.open(store.path)
    store, _ = _toy_store(tmp_path / "s")
    ids = tmp_path / "s" / S.IDS_FILE
    ids.write_text("\n".join(ids.read_text().splitlines()[:-3]) + "\n")  # truncated id list
    with pytest.raises(StoreError, match=r"shape \(18, 5\).*15 ids"):
        EmbeddingStore.open(store.path)
    with pytest.raises(ValueError, match="row 1 .* not finite"):
        write_store(tmp_path / "t", np.array([[1.0, 0], [np.nan, 1]]), ["x", "y"], spec="toy")


# ------------------------------------------------------------------------------------------- one writer
def _start_holder(store: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(HOLDER), str(store), str(seconds)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_told_who_holds_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    holder = _start_holder(store, 60)
    try:
        with pytest.raises(
            StoreLockedError, match=rf"process {holder.pid} on host {socket.gethostname()}.*wait"
        ):
            with S.store_lock(store):
                pass
        with pytest.raises(StoreError, match=f"being written by process {holder.pid}"):
            write_store(store, np.eye(2), ["x", "y"], spec="toy")
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    holder = _start_holder(store, 600)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (store / S.LOCK_FILE).exists()  # the killed run left its lock file (and pid file) behind
    with S.store_lock(store):
        owner = json.loads((store / (S.LOCK_FILE + ".owner")).read_text())
        assert owner["pid"] == os.getpid()
    assert write_store(store, np.eye(2), ["x", "y"], spec="toy").ids.tolist() == ["x", "y"]


def test_wait_queues_behind_the_holder(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    holder = _start_holder(store, 1.5)
    start = time.monotonic()
    try:
        result = write_store(store, np.eye(2), ["x", "y"], spec="toy", wait=True)
    finally:
        holder.wait()
    assert holder.returncode == 0 and time.monotonic() - start > 0.5 and len(result) == 2


def test_lock_is_per_store_and_released_on_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    with S.store_lock(a), S.store_lock(b):  # different stores do not block each other
        pass
    with pytest.raises(RuntimeError, match="boom"), S.store_lock(a):
        raise RuntimeError("boom")
    done = threading.Event()

    def take() -> None:
        with S.store_lock(a):
            done.set()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(10)
    assert done.is_set()


# ------------------------------------------------------------------ chunked import (memory-bounded)
def _reference_normalised(x: np.ndarray) -> np.ndarray:
    """The former whole-matrix path: float32, norms over all rows at once, one division."""
    m = np.asarray(x, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1)[:, None]


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_write_store_in_chunks_equals_the_whole_matrix_path(tmp_path: Path, chunk_rows: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 9)) * rng.uniform(0.1, 10, size=(50, 1))
    fps = [f"img/{i}.png" for i in range(50)]
    store = write_store(tmp_path / "s", x, fps, spec="toy", chunk_rows=chunk_rows)
    np.testing.assert_array_equal(np.asarray(store.embeddings), _reference_normalised(x))
    assert store.ids.tolist() == fps


def test_write_store_rows_pick_rows_of_a_memmap(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    src = np.load(tmp_path / "x.npy", mmap_mode="r")
    keep = np.array([0, 3, 4, 9, 39])
    store = write_store(tmp_path / "s", src, [f"f{i}" for i in keep], spec="toy", rows=keep, chunk_rows=2)
    np.testing.assert_array_equal(np.asarray(store.embeddings), _reference_normalised(x[keep]))


@pytest.mark.parametrize("subset", [False, True])
def test_adopt_matrix_equals_write_store_and_consumes_the_file(tmp_path: Path, subset: bool) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(33, 8)).astype(np.float32)
    keep = np.flatnonzero(rng.random(33) < 0.7) if subset else np.arange(33)
    fps = [f"f{i}" for i in keep]
    expected = write_store(tmp_path / "whole", x[keep], fps, spec="toy")
    npy = tmp_path / "stage.npy"
    np.save(npy, x)
    store = adopt_matrix(tmp_path / "adopted", npy, fps, spec="toy", rows=keep, chunk_rows=4)
    np.testing.assert_array_equal(np.asarray(store.embeddings), np.asarray(expected.embeddings))
    assert store.ids.tolist() == fps and not npy.exists()
    assert is_complete(tmp_path / "adopted")


def test_adopt_matrix_bad_row_changes_nothing(tmp_path: Path) -> None:
    x = np.eye(4, dtype=np.float32)
    x[2] = 0
    npy = tmp_path / "stage.npy"
    np.save(npy, x)
    with pytest.raises(ValueError, match=r"row 2 \(f2\)"):
        adopt_matrix(tmp_path / "s", npy, [f"f{i}" for i in range(4)], spec="toy", chunk_rows=1)
    np.testing.assert_array_equal(np.load(npy), x)  # the file is untouched
    assert not is_complete(tmp_path / "s")


def test_take_of_every_row_in_order_is_the_read_only_matrix_and_else_a_copy() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    vec = ManifestVectors(matrix, np.array([0, 1, 2, 3]), [])
    whole = vec.take(np.arange(4))
    np.testing.assert_array_equal(whole, matrix)
    assert np.shares_memory(whole, matrix) and not whole.flags.writeable
    for rows in ([3, 2, 1, 0], [0, 1, 2], [0, 1, 2, 3, 3]):
        part = vec.take(rows)
        np.testing.assert_array_equal(part, matrix[rows])
        assert not np.shares_memory(part, matrix) and part.flags.writeable
    shuffled = ManifestVectors(matrix, np.array([1, 0, 2, 3]), [])  # manifest order differs from the store's
    np.testing.assert_array_equal(shuffled.take(np.arange(4)), matrix[[1, 0, 2, 3]])


def _rss_file_kib() -> int:
    """This process's resident file-backed pages (Linux /proc), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_release_pages_drops_a_memmaps_resident_pages_and_keeps_its_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = write_store(
        tmp_path / "s", rng.normal(size=(16_384, 512)), [f"{i}.png" for i in range(16_384)], spec="toy"
    )
    store = EmbeddingStore.open(store.path)  # 32 MiB matrix, memmapped
    before = float(np.asarray(store.embeddings, dtype=np.float64).sum())  # touches every page
    resident = _rss_file_kib()
    assert store.release_pages()
    assert (
        resident - _rss_file_kib() >= 0.9 * store.embeddings.nbytes / 1024
    )  # the matrix's pages left the RSS
    assert float(np.asarray(store.embeddings, dtype=np.float64).sum()) == before  # read back unchanged
    assert not S.release_pages(np.zeros((3, 2), np.float32))  # not a memmap: nothing to release


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_large_take_releases_the_memmap_pages_it_copied(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    ids = [f"{i}.png" for i in range(16_384)]
    store = EmbeddingStore.open(
        write_store(tmp_path / "s", rng.normal(size=(16_384, 512)), ids, spec="toy").path
    )
    vectors = store.vectors_for(ids)
    rows = np.arange(0, 16_384, 2)[::-1]  # every other row, reversed: a copy that touches every page
    monkeypatch.setattr(S, "RELEASE_AFTER_BYTES", 10**12)  # below the threshold: the pages stay
    before = _rss_file_kib()
    kept = vectors.take(rows)
    assert _rss_file_kib() - before >= 0.9 * store.embeddings.nbytes / 1024
    monkeypatch.setattr(S, "RELEASE_AFTER_BYTES", 1)
    again = vectors.take(rows)
    assert _rss_file_kib() - before < 0.1 * store.embeddings.nbytes / 1024  # released after the copy
    np.testing.assert_array_equal(again, kept)
    np.testing.assert_array_equal(again, np.asarray(store.embeddings)[rows])
