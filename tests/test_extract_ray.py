"""The Ray Data engine: the same store as the local engine, resumption after a killed driver, failures, actors.

One local Ray runtime (4 logical CPUs, no dashboard, a small object store) serves the whole module; the killed
driver is a subprocess that connects to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cbmir import store as S
from cbmir.extract import extract_embeddings
from cbmir.store import EmbeddingStore, is_complete
from PIL import Image

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install -e '.[ray]')")

from cbmir.extract_ray import ActorPlan, RayEngineError, plan_actors  # noqa: E402

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from _embed_worker import tiny_encoder  # noqa: E402

WORKER = TESTS / "_embed_worker.py"
N_IMAGES = 30
RAY_CPUS = 4  # logical CPUs of the test runtime: 2 encoder actors + 2 decode slots
STARTS = 3  # attempts to start the runtime (later ones at a raised priority where permitted)
STORE_FILES = (S.EMBEDDINGS_FILE, S.IDS_FILE, S.FAILED_FILE)
UNREADABLE = ["corrupt.png", "missing/nowhere.png", "../secret.png", "empty.png"]
_WRITE_CHUNK = S.write_chunk


def _start_ray(temp_dir: Path) -> None:
    kwargs = {
        "num_cpus": RAY_CPUS,
        "num_gpus": 0,
        "include_dashboard": False,
        "object_store_memory": 128 * 2**20,
        "_temp_dir": str(temp_dir),
        "_system_config": {"enable_worker_prestart": False},  # workers start when a task needs one
    }
    for attempt in range(STARTS):
        try:
            with _raised_priority(temp_dir) if attempt else contextlib.nullcontext():
                ray.init(**kwargs)
            return
        except Exception as err:  # Ray gives its agents ~15 s to start, which a loaded machine can exceed
            if "timed out during startup" not in str(err) or attempt == STARTS - 1:
                raise
            ray.shutdown()
            _end_processes_using(temp_dir)


def _pids_using(folder: Path) -> list[int]:
    """The processes (not this one) with a file open under `folder`: the test runtime's Ray processes."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        try:
            if any(str(fd.readlink()).startswith(str(folder)) for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours to inspect
            continue
    return pids


def _end_processes_using(folder: Path) -> None:
    """SIGKILL the test runtime's processes, which can outlive `ray.shutdown()` on a loaded machine."""
    for pid in _pids_using(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _raised_priority(folder: Path):
    """Start Ray's processes at nice -5 (where permitted), and return them and this process to 0 once up."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -5)
    except OSError:  # not permitted: start at the normal priority
        yield
        return
    try:
        yield
    finally:
        for pid in [*_pids_using(folder), os.getpid()]:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, 0)


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Ray runtime for this module: the cluster at `RAY_ADDRESS` if set (its workers must import cbmir and
    this folder's modules), else a local one started here whose workers import both."""
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()  # disconnects; the cluster keeps running
        return
    lib = str(TESTS.parent / "lib")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([lib, str(TESTS), *([saved] if saved else [])])
    temp_dir = tmp_path_factory.mktemp("ray")
    try:
        _start_ray(temp_dir)
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        _end_processes_using(temp_dir)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """30 small random PNGs plus a corrupt file, an empty one, a missing one and one outside the data root."""
    base = tmp_path_factory.mktemp("ray-images")
    root = base / "data"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = []
    for i in range(N_IMAGES):
        name = f"sub/img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (12 + i % 3, 12, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (root / "empty.png").write_bytes(b"")
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(base / "secret.png")
    names[7:7] = (
        UNREADABLE  # rows 7..10: the whole first batch of the second chunk (chunks of 7, batches of 4)
    )
    return root, pd.DataFrame({"filepath": names})


def _run(images: tuple[Path, pd.DataFrame], out: Path, **kwargs: object) -> EmbeddingStore:
    root, manifest = images
    options = {"batch_size": 4, "num_workers": 0, "chunk_size": 7, **kwargs}
    return extract_embeddings(manifest, root, tiny_encoder(), out, **options)


@pytest.fixture(scope="module")
def local_store(
    images: tuple[Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> EmbeddingStore:
    return _run(images, tmp_path_factory.mktemp("local"))


def _assert_same_files(store: EmbeddingStore, reference: EmbeddingStore) -> None:
    """Row for row and byte for byte: the matrix, the ids and the failures."""
    assert store.ids.tolist() == reference.ids.tolist()
    np.testing.assert_array_equal(np.asarray(store.embeddings), np.asarray(reference.embeddings))
    for name in STORE_FILES:
        assert (store.path / name).read_bytes() == (reference.path / name).read_bytes(), name
    assert not (store.path / S.CHUNKS_DIR).exists()


# ------------------------------------------------------------------------------------------ same store
def test_ray_store_is_the_local_store_byte_for_byte_with_failures_listed(
    ray_address: str, images: tuple[Path, pd.DataFrame], local_store: EmbeddingStore, tmp_path: Path
) -> None:
    store = _run(images, tmp_path / "ray", engine="ray")
    _assert_same_files(store, local_store)
    assert len(store) == N_IMAGES
    failed = store.failed.set_index("filepath")["error"]  # skipped and listed, with the local engine's texts
    assert list(failed.index) == UNREADABLE
    assert "corrupt" in failed["corrupt.png"] and "not found" in failed["missing/nowhere.png"]
    assert "outside the data root" in failed["../secret.png"] and failed["empty.png"]
    prov, local = store.provenance, local_store.provenance
    assert prov["engine"] == "ray" and local["engine"] == "local"
    assert (
        prov["ray"]["actors"] == plan_actors(ray.cluster_resources()).actors and prov["ray"]["num_gpus"] == 0
    )
    assert 1 <= prov["ray"]["actors_used"] <= prov["ray"]["actors"]
    assert prov["device"] == "cpu" and prov["dtype"] == local["dtype"] == "fp32"
    assert prov["precision"] == local["precision"] and prov["rows"] == N_IMAGES
    # the same forward batches ran (a batch holds the readable images of its planned rows)
    assert prov["batch_size"] == local["batch_size"]
    assert sum(int(k) * v for k, v in prov["batch_size"]["ran"].items()) == N_IMAGES


class _Stop(BaseException):
    """Stands in for a kill of the local run (nothing catches it)."""


def _stop_after_chunks(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """Make `S.write_chunk` record each chunk it writes and raise `_Stop` right after the n-th (0: never)."""
    written: list[str] = []
    real = _WRITE_CHUNK

    def write(path: Path, *args: object, **kwargs: object) -> None:
        real(path, *args, **kwargs)
        written.append(path.name)
        if len(written) == n:
            raise _Stop

    monkeypatch.setattr(S, "write_chunk", write)
    return written


def test_a_store_begun_by_one_engine_is_finished_by_the_other(
    ray_address: str,
    images: tuple[Path, pd.DataFrame],
    local_store: EmbeddingStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "store"
    _stop_after_chunks(monkeypatch, 2)
    with pytest.raises(_Stop):
        _run(images, out)  # the local engine, stopped once chunks 0 and 1 are on disk
    assert S.done_chunks(out / S.CHUNKS_DIR, 5) == {0, 1}
    written = _stop_after_chunks(monkeypatch, 0)
    _assert_same_files(_run(images, out, engine="ray"), local_store)
    assert sorted(written) == [S.chunk_path(out, k).name for k in (2, 3, 4)]  # only the missing chunks ran


# -------------------------------------------------------------------------------------- killed driver
def _driver(manifest_csv: Path, root: Path, out: Path, address: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(WORKER), str(manifest_csv), str(root), str(out), "7", *extra]
    cmd += ["--engine", "ray", "--ray-address", address]
    env = {**os.environ, "TQDM_DISABLE": "1", "RAY_ADDRESS": address}
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _n_chunks(out: Path) -> int:
    return len(list((out / S.CHUNKS_DIR).glob("chunk_*.npz"))) if (out / S.CHUNKS_DIR).is_dir() else 0


@pytest.mark.slow
def test_sigkilled_driver_resumes_to_the_same_store(
    ray_address: str,
    images: tuple[Path, pd.DataFrame],
    local_store: EmbeddingStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL the driver once 2 of the 5 chunks are on disk; the next run embeds only the rest."""
    root, manifest = images
    manifest_csv = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_csv, index=False)
    out = tmp_path / "store"
    proc = _driver(manifest_csv, root, out, ray_address, "--sleep", "0.5")
    deadline = (
        time.monotonic() + 600
    )  # the driver imports torch and its actors start: minutes on a loaded machine
    while _n_chunks(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    done = S.done_chunks(out / S.CHUNKS_DIR, 5)
    assert 2 <= len(done) < 5 and not is_complete(out)
    written = _stop_after_chunks(monkeypatch, 0)
    store = _run(images, out, engine="ray")
    assert sorted(written) == sorted(S.chunk_path(out, k).name for k in range(5) if k not in done)
    _assert_same_files(store, local_store)
    assert json.loads((out / S.PROVENANCE_FILE).read_text())["engine"] == "ray"


def test_local_engine_never_imports_ray(images: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, manifest = images
    manifest_csv = tmp_path / "manifest.csv"
    manifest.iloc[:5].to_csv(manifest_csv, index=False)
    cmd = [sys.executable, str(WORKER), str(manifest_csv), str(root), str(tmp_path / "s"), "7"]
    done = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert done.stdout.decode().splitlines() == ["5 0", "ray not imported"]


# ---------------------------------------------------------------------------------------------- actors
@pytest.mark.parametrize(
    ("resources", "device", "expected"),
    [
        ({"CPU": 2.0}, None, ActorPlan(1, 1.0, 0.0, "cpu")),
        ({"CPU": 4.0}, None, ActorPlan(2, 1.0, 0.0, "cpu")),
        ({"CPU": 7.0, "memory": 1e9}, "cpu", ActorPlan(3, 1.0, 0.0, "cpu")),
        ({"CPU": 64.0, "GPU": 8.0}, None, ActorPlan(8, 1.0, 1.0, "cuda")),
        ({"CPU": 16.0, "GPU": 1.0}, "cuda", ActorPlan(1, 1.0, 1.0, "cuda")),
        ({"CPU": 16.0, "GPU": 2.0}, "cpu", ActorPlan(8, 1.0, 0.0, "cpu")),  # GPUs left alone when asked
    ],
)
def test_the_number_of_actors_follows_the_resources(
    resources: dict[str, float], device: str | None, expected: ActorPlan
) -> None:
    assert plan_actors(resources, device) == expected


def test_clusters_too_small_for_the_actors_are_refused() -> None:
    with pytest.raises(RayEngineError, match="1 CPU.*needs 2"):
        plan_actors({"CPU": 1.0})
    with pytest.raises(RayEngineError, match="'cuda' but the Ray cluster has no GPU"):
        plan_actors({"CPU": 8.0}, "cuda")
    with pytest.raises(RayEngineError, match="4 GPUs but 4 CPUs"):
        plan_actors({"CPU": 4.0, "GPU": 4.0})
    with pytest.raises(ValueError, match="parameter 'device'"):
        plan_actors({"CPU": 4.0}, "mps")


def test_the_runtime_decides_the_actor_pool(ray_address: str) -> None:
    """The module's runtime (4 CPUs and no GPU when started here): one CPU actor per two CPUs."""
    cpus = int(ray.cluster_resources()["CPU"])
    assert plan_actors(ray.cluster_resources()) == ActorPlan(cpus // 2, 1.0, 0.0, "cpu")


def test_unknown_engine_is_refused(images: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parameter 'engine' is 'spark'"):
        _run(images, tmp_path, engine="spark")


# ---------------------------------------------------------------------------------------- config and CLI
def _config(tmp_path: Path, **keys: object) -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    cfg = {"name": "tiny", "manifest": "m.csv", "data_root": "data", "work_dir": "work/tiny",
           "models": ["raw-pixels"], "notebooks": ["02_embeddings"], **keys}  # fmt: skip
    path = tmp_path / "configs" / "tiny.yaml"
    path.write_text(json.dumps(cfg))  # JSON is valid YAML
    return path


def test_the_config_engine_reaches_the_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cbmir.extract
    from cbmir.config import ConfigError, load_config
    from cbmir.pipeline import Context

    seen: dict[str, object] = {}
    monkeypatch.setattr(cbmir.extract, "extract_embeddings", lambda *a, **kw: seen.update(kw))
    Context(load_config(_config(tmp_path)), manifest=None).embeddings("raw-pixels")
    assert seen["engine"] == "local" and seen["ray_address"] is None  # the default
    path = _config(tmp_path, engine="ray", ray_address="head:6379")
    Context(load_config(path), manifest=None).embeddings("raw-pixels")
    assert seen["engine"] == "ray" and seen["ray_address"] == "head:6379"
    with pytest.raises(ConfigError, match=r"tiny\.yaml: engine"):
        load_config(_config(tmp_path, engine="spark"))


def test_embed_engine_option_reaches_the_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cbmir.extract
    from cbmir.cli import main

    manifest = tmp_path / "m.csv"
    pd.DataFrame({"filepath": ["a.png"], "dataset": ["d"], "split": ["train"], "modality": ["XR"],
                  "anatomic_region": ["chest"], "XR/chest/normal": [1]}).to_csv(manifest, index=False)  # fmt: skip
    seen: dict[str, object] = {}

    def fake(*args: object, **kwargs: object) -> EmbeddingStore:
        seen.update(kwargs)
        raise S.StoreError("stop here")

    monkeypatch.setattr(cbmir.extract, "extract_embeddings", fake)
    argv = ["embed", "--model", "raw-pixels", "--manifest", str(manifest), "--data-root", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "s"), "--engine", "ray", "--ray-address", "head:6379"]) == 2
    assert seen["engine"] == "ray" and seen["ray_address"] == "head:6379"
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2 and seen["engine"] == "local"
