"""LiteMedSAM's window attention: TinyViT's own matmul-softmax-matmul against one fused SDPA call, per precision.

`cbmir.accelerate.TINYVIT_SDPA` decides, by precision, whether `optimise_for_inference` routes TinyViT's 7x7-window
attention through `scaled_dot_product_attention`. This benchmark is the evidence for that table: for each precision
and compile mode, `--pairs` pairs of fresh processes (the two variants in alternating order, so a drift of the
shared machine's speed hits both), each preparing LiteMedSAM with the table entry forced one way and timing the
bare forward pass (best of 3 over `--n` random images, batch 8), beside the same-dtype GEMM rate of the same
process (`bench_extraction.gemm_rate`). Reported: each variant's median img/s and % GEMM, and the median of the
per-pair ratios own / fused with how many pairs favoured each.

    python benchmarks/bench_window_attention.py                       # bf16 (where native) and fp32, eager and compiled
    python benchmarks/bench_window_attention.py --precisions bf16 --compile on --pairs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = ("fused", "own")


def child(variant: str, precision: str, compile_mode: str, n: int) -> dict:
    """Prepare LiteMedSAM with the window attention forced to `variant` and time it; returns the figures."""
    import cbmir.accelerate as acc
    import torch
    from bench_extraction import bare, gemm_rate, input_shape, load

    acc.TINYVIT_SDPA[precision] = variant == "fused"
    encoder = load("litemedsam")
    shape = input_shape(encoder)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(8, n - i), *shape, generator=gen) for i in range(0, n, 8)]
    gflop = acc.gflop_per_image(encoder.module.eval(), batches[0])
    fast, _ = acc.optimise_for_inference(
        encoder, "cpu", precision, example=batches[0][:1], compile=compile_mode, batch_size=8
    )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rates, gemms = [], []
    with acc.large_tensors_on_heap():
        bare(fast.module, batches[:1])  # the first calls after compiling still create oneDNN primitives
        for _ in range(3):
            gemms.append(gemm_rate(dtype))
            rates.append(bare(fast.module, batches))
    return {"img_s": max(rates), "gemm": max(gemms), "gflop": gflop}


def run_child(variant: str, precision: str, compile_mode: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--precisions", precision, "--compile", compile_mode]
    out = subprocess.run(cmd + ["--n", str(n)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--compile", default="off,on", help="comma-separated compile modes: off, on")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--n", type=int, default=24, help="images per timed pass")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.precisions, args.compile, args.n)))
        return 0

    from bench_extraction import load_avg
    from cbmir.accelerate import cpu_info
    from results import append_results, command_line
    from tqdm.auto import tqdm

    info = cpu_info()
    precisions = [p for p in args.precisions.split(",") if p == "fp32" or info["native_bf16"]]
    lines = [
        f"- CPU: {info['model']}, {info['cores']} cores; ISA: {', '.join(info['isa'])}",
        f"- LiteMedSAM, batch 8, {args.n} random images per timed pass, best of 3 passes per process; "
        f"{args.pairs} pairs of fresh processes per row, the variants in alternating order; fused = TinyViT "
        "attention as one scaled_dot_product_attention call, own = TinyViT's q k^T, softmax, @ v",
        "",
        "| precision | compile | fused img/s (% GEMM) | own img/s (% GEMM) | own / fused, median of pairs | pairs own faster | load |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    jobs = [(p, c) for p in precisions for c in args.compile.split(",")]
    progress = tqdm(total=len(jobs) * args.pairs * 2, desc="processes")
    for precision, compile_mode in jobs:
        got: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for pair in range(args.pairs):
            order = VARIANTS if pair % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                got[variant].append(run_child(variant, precision, compile_mode, args.n))
                progress.update()
        ratios = [o["img_s"] / f["img_s"] for o, f in zip(got["own"], got["fused"], strict=True)]

        def cell(rows: list[dict]) -> str:
            rate = statistics.median(r["img_s"] for r in rows)
            share = statistics.median(100 * r["img_s"] * r["gflop"] / r["gemm"] for r in rows)
            return f"{rate:.2f} ({share:.0f} %)"

        row = (
            f"| {precision} | {compile_mode} | {cell(got['fused'])} | {cell(got['own'])} "
            f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {sum(r > 1 for r in ratios)} of {len(ratios)} | {load_avg()} |"
        )
        print(row, flush=True)
        lines.append(row)
    progress.close()
    if not args.no_append:
        import torch

        append_results(
            "bench_window_attention: LiteMedSAM window attention, own matmuls vs fused SDPA",
            command_line(Path(__file__).name, argv),
            lines,
            machine_extra=f"torch {torch.__version__}",
        )
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
