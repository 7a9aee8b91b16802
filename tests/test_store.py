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
