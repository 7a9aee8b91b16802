"""The Ray engine's overhead on one node: images/s of `extract_embeddings(engine="ray")` against the local engine.

Both engines embed the same RadMini images with the same encoder, chunk plan and batch size into fresh stores, in
the same run, alternating (local, ray, local, ray, ... for `--rounds`); the figure is the ratio ray / local of the
best whole-call images/s (model loading included; Ray's runtime start-up is timed separately and left out, as a
cluster is already running). Each pair of stores is checked byte for byte (`embeddings.npy`, `ids.csv`,
`failed.csv`). The steady rate is the store's own chunk timing (`images_per_second` in provenance), which starts
when the first batch is asked for and so includes Ray's actor start-up but not the model load in the driver.

With CUDA present a GPU section repeats the comparison with `device="cuda"` for the local engine and one GPU
actor for the Ray engine (`--gpu-n` images). On a CPU-only machine the Ray engine runs half the cores as encoder
actors (one core each) and decodes on the other half; the local engine uses every core in one process.

    python benchmarks/bench_ray.py                       # random-vit, 32 RadMini images, 2 rounds
    python benchmarks/bench_ray.py --model dinov2-s14-imgfocus --n 64 --no-append
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from results import append_results, command_line

ROOT = Path(__file__).resolve().parents[1]
STORE_FILES = ("embeddings.npy", "ids.csv", "failed.csv")


def radmini(n: int) -> tuple[Path, pd.DataFrame]:
    """The first `n` rows of the RadMini manifest and its image root (built by `make radmini`)."""
    from cbmir.manifest import read_manifest

    manifest_path, root = ROOT / "data_splits/radmini.csv", ROOT / "data/radmini"
    if not manifest_path.exists() or not root.is_dir():
        sys.exit(f"bench_ray needs RadMini: {manifest_path} and {root} (make radmini)")
    manifest = read_manifest(manifest_path)
    step = max(1, len(manifest) // n)  # spread over the sources (the manifest is grouped by source)
    return root, manifest.iloc[::step].head(n).reset_index(drop=True)


def timed_run(
    manifest: pd.DataFrame, root: Path, model: str, out: Path, args, **kwargs
) -> tuple[float, dict]:
    """(whole-call seconds, provenance) of one extraction into a fresh store."""
    from cbmir.extract import extract_embeddings

    start = time.perf_counter()
    store = extract_embeddings(
        manifest, root, model, out, batch_size=args.batch, chunk_size=args.chunk, redo=True, **kwargs
    )
    seconds = time.perf_counter() - start
    assert len(store) + len(store.failed) == len(manifest), "rows lost"
    return seconds, store.provenance


def same_files(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in STORE_FILES)


def compare(manifest, root, args, tmp: Path, device: str, label: str) -> list[str]:
    """Alternate local and Ray runs; one table row per engine and the ratio line."""
    best = {"local": (float("inf"), {}), "ray": (float("inf"), {})}
    identical = True
    for r in range(args.rounds):
        for engine in ("local", "ray"):
            out = tmp / f"{label}-{engine}-{r}"
            options = {"device": device} if engine == "local" else {"engine": "ray"}
            seconds, prov = timed_run(manifest, root, args.model, out, args, **options)
            print(f"{label} round {r + 1} {engine}: {len(manifest) / seconds:.2f} img/s", flush=True)
            if seconds < best[engine][0]:
                best[engine] = (seconds, prov)
        identical &= same_files(tmp / f"{label}-local-{r}", tmp / f"{label}-ray-{r}")
    n = len(manifest)
    rows = [
        "| engine | workers | whole-call img/s (best) | steady img/s (chunk timing) | device | dtype |",
        "|---|---|---:|---:|---|---|",
    ]
    for engine, (seconds, prov) in best.items():
        ray_info = prov.get("ray") or {}
        workers = (
            f"{ray_info.get('actors')} actor(s) x {ray_info.get('num_cpus'):g} CPU"
            + (f" + {ray_info.get('num_gpus'):g} GPU" if ray_info.get("num_gpus") else "")
            if engine == "ray"
            else f"{prov.get('num_workers')} DataLoader workers"
        )
        rows.append(
            f"| {engine} | {workers} | {n / seconds:.2f} | {prov.get('images_per_second') or 0:.2f} "
            f"| {prov.get('device')} | {prov.get('dtype')} |"
        )
    ratio = best["local"][0] / best["ray"][0]
    return [
        *rows,
        "",
        f"- ray / local (whole-call img/s): **{ratio:.2f}**; stores byte-identical in every round: {identical}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-vit", help="an offline encoder spec (default random-vit)")
    p.add_argument("--n", type=int, default=32, help="RadMini images (default 32)")
    p.add_argument("--gpu-n", type=int, default=512, help="images for the GPU section (default 512)")
    p.add_argument("--gpu-batch", type=int, default=64, help="batch size of the GPU section (default 64)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--chunk", type=int, default=8, help="chunk size (default 8: several chunks in flight)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = p.parse_args(argv)
    import ray
    import torch
    from cbmir.accelerate import cpu_info

    root, manifest = radmini(args.n)
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False)
    startup = time.perf_counter() - start
    info = cpu_info()
    command = command_line(__file__, argv)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
            lines = [
                f"- CPU: {info['model']}, {cores} usable cores, torch threads {torch.get_num_threads()}; "
                f"Ray {ray.__version__} local runtime ({cores} CPUs), start-up {startup:.1f} s (not counted)",
                f"- {args.model}, {len(manifest)} RadMini images, batch {args.batch}, chunks of {args.chunk}, "
                f"best of {args.rounds} alternating rounds; 1-min load average {load_before:.1f} at start, "
                f"{os.getloadavg()[0]:.1f} at the end of the CPU section",
                "- the load average above says how busy the machine was: compare the engines within this run only",
                "",
                *compare(manifest, root, args, Path(tmp), "cpu", "cpu"),
            ]
            print("\n".join(lines))
            if not args.no_append:
                append_results("bench_ray: local vs Ray engine on one node (CPU)", command, lines)
            if torch.cuda.is_available():
                ray.shutdown()
                ray.init(num_cpus=cores, num_gpus=1, include_dashboard=False)
                _, gpu_manifest = radmini(args.gpu_n)
                gpu_args = argparse.Namespace(
                    **{**vars(args), "batch": args.gpu_batch, "chunk": 4 * args.gpu_batch}
                )
                gpu = [
                    f"- GPU: {torch.cuda.get_device_name(0)}; {args.model}, {len(gpu_manifest)} RadMini images, "
                    f"batch {gpu_args.batch}, chunks of {gpu_args.chunk}; local engine device=cuda, Ray engine one "
                    "GPU actor",
                    "",
                    *compare(gpu_manifest, root, gpu_args, Path(tmp), "cuda", "gpu"),
                ]
                print("\n".join(gpu))
                if not args.no_append:
                    append_results("bench_ray: local vs Ray engine on one node (GPU)", command, gpu)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
