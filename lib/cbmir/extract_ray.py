"""The Ray Data engine of `cbmir.extract`: the same chunk plan and the same store, across GPUs and nodes.

`extract_embeddings(..., engine="ray")` holds the store's lock and checks its plan as the local engine does, then
calls `run_chunks_on_ray`, which embeds the pending chunks:

- The pending forward batches (`cbmir.extract.batch_bounds`, the local engine's plan) are read as a Ray dataset,
  one row per forward batch (its first manifest row, its images' paths and frames), one block per chunk. A Ray
  row is a whole forward batch so that every image meets the same batch neighbours as in the local engine: the
  vectors, and so the store's files, come out identical.
- Decoding and preprocessing run as Ray tasks on CPUs, through the local engine's `ManifestImages` (the same
  data-root containment check and the same error texts in `failed.csv`).
- The encoder runs in a fixed pool of actors (`ray.data.ActorPoolStrategy`): one per GPU of the cluster, or, on
  a cluster without GPUs, one per two CPUs (`plan_actors`). Each actor embeds through `PrecisionRunner`.
- This process (the driver) collects the vectors and writes each chunk through `ChunkWriter` as soon as it is
  complete, in whatever order chunks finish. A killed driver loses only the chunks in flight; the next run, with
  either engine, resumes from the chunks on disk.

Ray is an optional dependency (`pip install -e '.[ray]'`) imported only here. The driver connects to
a Ray runtime this process already has, else to `ray_address`, else to `RAY_ADDRESS`, else it starts a local
one for the run. On a cluster every node needs the same Python environment (cbmir installed) and must see
the data root and the store's folder at the same paths (a shared file system).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cbmir.errors import CbmirError
from cbmir.extract import ChunkWriter, ManifestImages, batch_bounds
from cbmir.progress import hide_progress

if TYPE_CHECKING:
    from cbmir.decode_cache import DecodeCache
    from cbmir.models.base import Encoder

ACTOR_BASE_MEMORY = 512 * 2**20  # a worker process with torch loaded, before the model
NO_FRAME = -1  # a manifest row without a `frame`


class RayEngineError(CbmirError, RuntimeError):
    """Ray is not installed, or the cluster cannot run the encoder actors as asked (the message says why)."""


def import_ray() -> Any:
    """The `ray` module, or `RayEngineError` saying how to install the optional extra."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library needs the [data] dependencies (pyarrow)
    except ImportError as err:
        raise RayEngineError(
            f"engine 'ray' needs Ray Data, which is not installed ({err}); install the extra: "
            "pip install -e '.[ray]'"
        ) from err
    return ray


# ---------------------------------------------------------------------------------------------- actors
@dataclass(frozen=True)
class ActorPlan:
    """How many encoder actors run and what each reserves (Ray's logical resources)."""

    actors: int
    num_cpus: float
    num_gpus: float
    device: str  # what the actors run on: "cuda" (their own GPU) or "cpu"


def plan_actors(resources: Mapping[str, float], device: str | None = None) -> ActorPlan:
    """The encoder actors for a cluster with these resources (`ray.cluster_resources()`).

    With GPUs (and `device` None or cuda): one actor per GPU, each with its GPU and one CPU; the other CPUs
    decode. Without (or with `device` "cpu"): half the CPUs run one single-CPU actor each, the other half
    decode. `RayEngineError` when the cluster is too small for that.
    """
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if device is None:
        device = "cuda" if gpus else "cpu"
    if device.startswith("cuda"):
        if gpus < 1:
            raise RayEngineError(f"parameter 'device' is {device!r} but the Ray cluster has no GPU")
        if cpus < gpus + 1:
            raise RayEngineError(
                f"the Ray cluster has {gpus} GPUs but {cpus} CPUs; it needs one CPU per GPU actor and one to decode"
            )
        return ActorPlan(gpus, 1.0, 1.0, "cuda")
    if device != "cpu":
        raise ValueError(f"parameter 'device' is {device!r}; the Ray engine runs on 'cuda' or 'cpu'")
    if cpus < 2:
        raise RayEngineError(
            f"the Ray cluster has {cpus} CPU(s) and no GPU; it needs 2: one to decode, one for an encoder actor"
        )
    return ActorPlan(cpus // 2, 1.0, 0.0, "cpu")


def actor_memory(encoder: Encoder) -> int:
    """Host memory (bytes) an encoder actor reserves: a worker process plus three copies of the weights (the
    weights, the checked copy `cbmir.accelerate` makes on the CPU, headroom). Reserving it also keeps Ray Data
    from fusing the decode tasks into the actors, which would otherwise happen on CPU-only clusters."""
    state = encoder.module.state_dict()
    weights = sum(t.numel() * t.element_size() for t in state.values() if hasattr(t, "numel"))
    return ACTOR_BASE_MEMORY + 3 * int(weights)


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array holding `values` as they are (numpy would merge equal-shaped arrays)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def decode_batch(
    row: dict[str, Any], data_root: str, transform: Any, cache: DecodeCache | None = None
) -> dict[str, Any]:
    """Ray task: read and preprocess the images of one forward batch (`ManifestImages`, as the local engine;
    `cache`: a `cbmir.decode_cache` folder that every node can reach).

    Returns the readable rows, their stacked pixels (flattened, with `shape`) and the failures as JSON."""
    import torch

    lo = int(row["lo"])
    frames = [None if int(f) == NO_FRAME else int(f) for f in row["frames"]]
    images = ManifestImages(data_root, [str(p) for p in row["paths"]], transform, frames, cache)
    rows, tensors, failures = [], [], []
    for i in range(len(images)):
        _, tensor, error = images[i]
        if error:
            failures.append((lo + i, error))
        else:
            rows.append(lo + i)
            tensors.append(tensor)
    pixels = torch.stack(tensors).numpy() if tensors else np.zeros(0, np.float32)
    return {
        "lo": lo,
        "rows": np.asarray(rows, dtype=np.int64),
        "pixels": pixels.reshape(-1),
        "shape": np.asarray(pixels.shape, dtype=np.int64),
        "failures": json.dumps(failures),
    }


class EncoderActor:
    """Ray actor: the encoder on its device through `PrecisionRunner`; embeds one forward batch per input row."""

    def __init__(self, encoder: Encoder, device: str, bf16: bool, precision: str) -> None:
        import ray

        from cbmir.precision import PrecisionRunner

        self.runner = PrecisionRunner(encoder, device, bf16, precision)
        self.actor = ray.get_runtime_context().get_actor_id() or f"pid {os.getpid()}"
        self.info = json.dumps(
            {
                "precision": self.runner.precision,
                "dtype": self.runner.dtype_name,
                "tf32": self.runner.tf32,
                "speed": self.runner.speed,
                "device": device,
            },
            sort_keys=True,
            default=str,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        vectors, sizes, retries = [], [], []
        for rows, pixels, shape in zip(batch["rows"], batch["pixels"], batch["shape"], strict=True):
            before, oom = Counter(self.runner.batch_sizes_run), self.runner.oom_retries
            if len(rows):
                images = torch.from_numpy(np.array(pixels).reshape(tuple(int(s) for s in shape)))
                vectors.append(self.runner.embed(images))
            else:
                vectors.append(np.zeros((0, self.runner.encoder.dim), np.float32))
            sizes.append(json.dumps(dict(Counter(self.runner.batch_sizes_run) - before)))
            retries.append(self.runner.oom_retries - oom)
        n = len(vectors)
        return {
            "lo": batch["lo"],
            "rows": batch["rows"],
            "vectors": _objects(vectors),
            "failures": batch["failures"],
            "sizes": np.asarray(sizes, dtype=object),
            "oom": np.asarray(retries, dtype=np.int64),
            "actor": np.asarray([self.actor] * n, dtype=object),
            "info": np.asarray([self.info] * n, dtype=object),
        }


# ---------------------------------------------------------------------------------------------- driver
@contextlib.contextmanager
def ray_runtime(address: str | None = None) -> Iterator[str]:
    """Connect to Ray for one run and say where: the runtime this process already has (left running), else
    `address`, else `RAY_ADDRESS`, else a local one on this machine's cores (shut down afterwards)."""
    ray = import_ray()
    if ray.is_initialized():
        yield f"runtime already connected ({ray.get_runtime_context().gcs_address})"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
        where = f"cluster {address}"
    else:
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False)
        where = "local runtime started for this run"
    try:
        yield where
    finally:
        ray.shutdown()


def batch_frames(
    ids: Sequence[str],
    frames: Sequence[int | None],
    n_rows: int,
    chunk_size: int,
    todo: Sequence[int],
    batch_size: int,
) -> list[pd.DataFrame]:
    """The pending forward batches as one DataFrame per chunk: `lo`, `paths`, `frames` (-1: none)."""
    out = []
    for k in todo:
        bounds = batch_bounds(n_rows, chunk_size, [k], batch_size)
        out.append(
            pd.DataFrame(
                {
                    "lo": [lo for lo, _ in bounds],
                    "paths": [list(ids[lo:hi]) for lo, hi in bounds],
                    "frames": [[NO_FRAME if f is None else f for f in frames[lo:hi]] for lo, hi in bounds],
                }
            )
        )
    return out


def run_chunks_on_ray(
    data_root: Path,
    ids: list[str],
    frames: list[int | None],
    encoder: Encoder,
    todo: list[int],
    plan: dict[str, Any],
    chunks: Path,
    batch_size: int,
    device: str | None,
    address: str | None,
    cache: DecodeCache | None = None,
) -> dict[str, Any]:
    """Embed the chunks `todo` on Ray into `chunks` (see the module doc); returns the run's provenance entries."""
    record: dict[str, Any] = {
        "engine": "ray",
        "precision": plan["precision"],
        "dtype": plan["precision"],
        "tf32": None,
        "num_workers": None,  # decode tasks are scheduled by Ray Data
        "loader": {},
        "speed": {},
        "device": device,
        "batch_size": {"requested": int(batch_size), "ran": {}, "out_of_memory_retries": 0},
        "ray": None,
    }
    if not todo:
        return record
    ray = import_ray()
    from tqdm.auto import tqdm

    with ray_runtime(address) as where:
        resources = ray.cluster_resources()
        actors = plan_actors(resources, device)
        memory = actor_memory(encoder)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = not hide_progress()
        blocks = batch_frames(ids, frames, plan["n_rows"], plan["chunk_size"], todo, batch_size)
        dataset = (
            ray.data.from_pandas(blocks)
            .map(
                decode_batch,
                fn_kwargs={"data_root": str(data_root), "transform": encoder.transform, "cache": cache},
                num_cpus=1,
            )
            .map_batches(
                EncoderActor,
                fn_constructor_args=(encoder, actors.device, plan["bf16"], plan["precision"]),
                batch_size=1,  # one forward batch (a row) per call
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors.actors),
                num_cpus=actors.num_cpus,
                num_gpus=actors.num_gpus,
                memory=memory,
            )
        )
        writer = ChunkWriter(chunks, plan, todo)
        sizes: Counter[str] = Counter()
        retries, used, infos = 0, set(), []
        total = sum(len(p) for block in blocks for p in block["paths"])
        bar = tqdm(total=total, desc=f"embed {plan['spec']} (ray)", unit="img", disable=hide_progress())
        with bar:
            for out in _unwrapped(dataset.iter_rows()):
                failures = [(int(r), str(e)) for r, e in json.loads(out["failures"])]
                rows = np.asarray(out["rows"], dtype=np.int64)
                vectors = np.asarray(out["vectors"], dtype=np.float32).reshape(len(rows), plan["dim"])
                writer.add(rows, vectors, failures)
                sizes.update({k: int(v) for k, v in json.loads(out["sizes"]).items()})
                retries += int(out["oom"])
                used.add(str(out["actor"]))
                if out["info"] not in infos:
                    infos.append(out["info"])
                bar.update(len(rows) + len(failures))
        writer.finish()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
    runner = json.loads(infos[0]) if infos else {}
    record.update({k: runner[k] for k in ("precision", "dtype", "tf32", "speed", "device") if k in runner})
    record["batch_size"] = {
        "requested": int(batch_size),
        "ran": {k: sizes[k] for k in sorted(sizes, key=int, reverse=True)},
        "out_of_memory_retries": retries,
    }
    record["ray"] = {
        "version": ray.__version__,
        "where": where,
        "nodes": len(nodes),
        "cluster": {k: resources[k] for k in ("CPU", "GPU") if k in resources},
        **asdict(actors),
        "actor_memory": memory,
        "actors_used": len(used),
        "runners": [json.loads(i) for i in infos]
        if len(infos) > 1
        else None,  # differing actors (mixed GPUs)
    }
    return record


def _unwrapped(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Ray's rows; a cbmir error raised inside a task or actor comes out as itself (not wrapped by Ray)."""
    try:
        yield from rows
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, CbmirError):
            cause = cause.__cause__
        if cause is not None and cause is not err:
            raise cause from err
        raise
