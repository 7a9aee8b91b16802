"""The default report's extraction, as the report runs it, against fp32 eager extraction: seconds per image.

For each model of the config (default `configs/radmini.yaml`), the report's own rows (manifest and row cap) are
embedded into temporary stores three times in the same run: as loaded (fp32 eager, the encoder's module untouched,
the C library's default allocation, greyscale files decoded to RGB before resizing, one DataLoader worker per core
but one: what every run did before `cbmir.accelerate`, i.e. when issue 15 was filed), with the fp32 rewrites (fp32, no torch.compile, but
`cbmir.accelerate`'s conv+BN folding, fused attention, channels-last, micro-batching and heap allocation), and
with the config's settings (`bf16`/`precision`, `compile`, `workers`). Each pass is timed whole (model load,
rewrite checks, compilation, DataLoader start-up, store); the table gives seconds per image per model and in total,
and the report's ratio to each baseline. The steps that ran
(from each store's provenance) are printed beside them.

    python benchmarks/bench_report_extraction.py
    python benchmarks/bench_report_extraction.py --models litemedsam --no-append
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from results import append_results, command_line


@contextmanager
def as_loaded():
    """Extraction without `cbmir.accelerate`: the module as loaded, fp32 eager, default allocation, and every image
    decoded to RGB before resizing (greyscale files were not yet kept as one channel)."""
    import cbmir.accelerate as acc
    import cbmir.images as images

    saved = acc.optimise_for_inference, acc.large_tensors_on_heap, images.load_image

    def untouched(encoder, device="cpu", precision="fp32", example=None, **_):
        return encoder, {"device": device, "precision": "fp32", "steps": ["none: the module as loaded"]}

    def rgb(path, frame=None, grey=False):
        return saved[2](path, frame)

    acc.optimise_for_inference, acc.large_tensors_on_heap, images.load_image = (
        untouched,
        lambda: nullcontext(""),
        rgb,
    )
    try:
        yield
    finally:
        acc.optimise_for_inference, acc.large_tensors_on_heap, images.load_image = saved


def timed_extraction(
    manifest, cfg, name: str, out: Path, bf16: bool, precision, compile: str, workers: int | None
) -> tuple[float, dict]:
    """(seconds, provenance) of one whole `extract_embeddings` call into a fresh store at `out`."""
    from cbmir.extract import extract_embeddings

    start = time.perf_counter()
    store = extract_embeddings(
        manifest, cfg.data_root, name, out, batch_size=cfg.batch_size_for(name), num_workers=workers,
        bf16=bf16, precision=precision, device="cpu", compile=compile, redo=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if len(store.ids) + len(store.failed) != len(manifest):
        raise RuntimeError(f"{name}: {len(store.ids)} rows + {len(store.failed)} failed != {len(manifest)}")
    return seconds, store.provenance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/radmini.yaml")
    parser.add_argument("--models", default=None, help="comma-separated (default: the config's models)")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from cbmir.accelerate import cpu_info
    from cbmir.pipeline import Context
    from cbmir.precision import default_workers

    ctx = Context.open(args.config)  # the report's own rows: its manifest and row cap
    cfg, manifest = ctx.cfg, ctx.manifest.reset_index(drop=True)
    models = args.models.split(",") if args.models else list(cfg.models)
    n = len(manifest)
    info = cpu_info()
    wanted = cfg.precision or ("bf16" if cfg.bf16 else "fp32")
    base_workers = default_workers()
    lines = [
        f"- CPU: {info['model']}; ISA: {', '.join(info['isa'])}; torch threads {torch.get_num_threads()}",
        f"- {cfg.name}: {n} images (the report's rows); as loaded = fp32 eager with the module untouched (no "
        f"cbmir.accelerate), {base_workers} DataLoader worker(s); fp32 rewrites = fp32, compile off, cbmir.accelerate's "
        f"fp32 steps, the same workers; report = precision {wanted}, compile {cfg.compile}, workers "
        f"{'default' if cfg.workers is None else cfg.workers} (as {args.config} sets them); whole extract_embeddings calls, "
        "load average before each pair",
        "",
        "| model | as loaded s/img | fp32 rewrites s/img | report s/img | report / as loaded | report / fp32 rewrites "
        "| load | report steps |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    totals = [0.0, 0.0, 0.0]
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            load = f"{os.getloadavg()[0]:.1f}"
            with as_loaded():
                loaded, _ = timed_extraction(
                    manifest, cfg, name, Path(tmp) / f"{name}-loaded", False, "fp32", "off", base_workers
                )
            base, _ = timed_extraction(
                manifest, cfg, name, Path(tmp) / f"{name}-base", False, "fp32", "off", base_workers
            )
            new, prov = timed_extraction(
                manifest,
                cfg,
                name,
                Path(tmp) / f"{name}-new",
                cfg.bf16,
                cfg.precision,
                cfg.compile,
                cfg.workers,
            )
            totals = [totals[0] + loaded, totals[1] + base, totals[2] + new]
            speed = prov.get("speed", {})
            steps = (
                "; ".join(speed.get("steps", []))
                + (f" [{speed['compile']}]" if "compile" in speed else "")
                + f"; decode {prov.get('loader', {}).get('decode', '?')}"
            )
            row = (
                f"| {name} | {loaded / n:.3f} | {base / n:.3f} | {new / n:.3f} | {new / loaded:.2f} | {new / base:.2f} "
                f"| {load} | {steps} |"
            )
            print(row, flush=True)
            lines.append(row)
    loaded, base, new = totals
    total = (
        f"| **all {len(models)} models** | {loaded / n:.3f} | {base / n:.3f} | {new / n:.3f} | {new / loaded:.2f} "
        f"| {new / base:.2f} | | |"
    )
    print(total)
    lines.append(total)
    if not args.no_append:
        command = command_line(__file__, argv)
        append_results(
            "bench_report_extraction: the default report's extraction time per image", command, lines
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
