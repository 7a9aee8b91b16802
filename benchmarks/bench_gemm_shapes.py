"""What the matrix multiplies of a ViT encoder can reach on this machine, at the encoder's own shapes.

Issue 15 asks for each encoder's forward pass at 50 % of the same-dtype GEMM rate, measured with large
transformer-shaped matmuls (`bench_extraction.GEMM_SHAPES`). A ViT-S at batch 8 multiplies much smaller matrices
(e.g. 2,056 x 384 @ 384 x 1,152). This script records every `nn.Linear` call of one forward pass (its M, K, N and
how often it occurs), times `torch.nn.functional.linear` at exactly those shapes in fp32 and bf16, and reports:

- the linear layers' share of the encoder's counted FLOPs (the rest: attention products, convolutions);
- the GEMM rate at the encoder's own linear shapes, FLOP-weighted, as a share of the reference GEMM rate of
  `bench_extraction` measured in the same run.

The second figure bounds what the forward pass can reach against the reference: a forward pass cannot run its
matmuls faster than the matmuls alone. Printed, and appended to RESULTS.md unless `--no-results`.

    .venv/bin/python benchmarks/bench_gemm_shapes.py [--models dinov2-s14-imgfocus,vit-b16-random] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_extraction import gemm_rate, input_shape, load  # noqa: E402
from results import append_results, best_seconds  # noqa: E402


def linear_shapes(module: torch.nn.Module, x: torch.Tensor) -> Counter:
    """{(M, K, N): calls} of every nn.Linear in one forward pass of `x` (M = rows of the flattened input)."""
    seen: Counter = Counter()

    def hook(mod, inp, _out):
        seen[(inp[0].numel() // mod.in_features, mod.in_features, mod.out_features)] += 1

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def shape_rate(shapes: Counter, dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of F.linear over `shapes` (each timed alone, best of `repeats`; weighted by calls)."""
    flops = seconds = 0.0
    for (m, k, n), calls in shapes.items():
        a, w = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
        with torch.inference_mode():
            F.linear(a, w)
            best = best_seconds(lambda a=a, w=w: F.linear(a, w), repeats)
        flops, seconds = flops + 2.0 * m * k * n * calls, seconds + best * calls
    return flops / seconds / 1e9


def main() -> None:
    from cbmir.accelerate import cpu_info, gflop_per_image

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="dinov2-s14-imgfocus,vit-b16-random")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    info = cpu_info()
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if info["native_bf16"] else [])
    reference = {name: gemm_rate(dtype) for name, dtype in dtypes}
    lines = [
        f"- CPU: {info['model']}, torch threads {torch.get_num_threads()}; ISA: {', '.join(info['isa'])}; "
        f"1-min load {os.getloadavg()[0]:.1f}",
        f"- batch {args.batch}; reference GEMM rate (bench_extraction.GEMM_SHAPES): "
        + ", ".join(f"{n} {r:.0f} GFLOP/s" for n, r in reference.items()),
        "",
        "| encoder | linear share of counted FLOPs | distinct linear shapes (M x K x N) | precision | GFLOP/s at its own "
        "shapes | share of the reference GEMM rate |",
        "|---|---:|---|---|---:|---:|",
    ]
    for name in args.models.split(","):
        module = load(name).module.eval()
        x = torch.randn(args.batch, *input_shape(load(name)))
        shapes = linear_shapes(module, x)
        linear_gflop = sum(2.0 * m * k * n * c for (m, k, n), c in shapes.items()) / 1e9
        share = linear_gflop / (gflop_per_image(module, x) * args.batch)
        listed = "; ".join(f"{m:,} x {k} x {n} ({c}x)" for (m, k, n), c in sorted(shapes.items()))
        for precision, dtype in dtypes:
            rate = shape_rate(shapes, dtype)
            lines.append(
                f"| {name} | {share:.0%} | {listed} | {precision} | {rate:.0f} | {rate / reference[precision]:.0%} |"
            )
            print(lines[-1], flush=True)
    print("\n".join(lines[:2]))
    if not args.no_results:
        append_results(
            "bench_gemm_shapes: GEMM rate at the encoders' own linear shapes",
            "python benchmarks/bench_gemm_shapes.py " + " ".join(sys.argv[1:]),
            lines,
        )


if __name__ == "__main__":
    main()
