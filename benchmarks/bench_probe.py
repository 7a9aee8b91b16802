"""Linear-probe training speed at the paper's shape: cbmir's training step against the plain autograd loop.

The probe (`cbmir.probe`) trains one `nn.Linear` with the paper's recipe: AdamW, batch 512, up to 100 epochs, on
1.36 M train rows x d with 161 classes at the paper's scale. At batch 512 each step is two small matrix products
(512 x d @ d x 161 and its gradient), so per-step overhead decides the epoch time. This script times, in one run
on the same synthetic matrix:

- `autograd`: the loop written the plain way (`model(x[idx])`, `nn.CrossEntropyLoss`, `loss.backward()`, AdamW
  with its default kernel); cbmir's probe was this loop until the written-out step replaced it;
- `cbmir`: `cbmir.probe.train_step` (the cross-entropy gradient written out, fused AdamW, one reused gather buffer).

Each variant runs `--steps` optimiser steps, best of `--repeats` (variants interleaved); the figures are ms per step,
the implied seconds per epoch (ceil(n / batch) steps) and the ratio against `autograd`. Printed, and appended to
RESULTS.md unless `--no-results`.

    .venv/bin/python benchmarks/bench_probe.py [--rows 1360000] [--dims 768,256] [--steps 600]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import append_results  # noqa: E402

CLASSES = 161  # the paper's fine labels


def autograd_steps(xt, yt, order, steps, batch):
    """The plain loop: gather by indexing, autograd, AdamW's default kernel."""
    model = torch.nn.Linear(xt.shape[1], CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    for s in range(steps):
        idx = order[s * batch : (s + 1) * batch]
        opt.zero_grad()
        loss = loss_fn(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        float(loss.detach())


def cbmir_steps(xt, yt, order, steps, batch):
    """cbmir.probe's loop: `train_step` with the fused AdamW of `adamw` and one reused gather buffer."""
    from cbmir.probe import adamw, train_step

    model = torch.nn.Linear(xt.shape[1], CLASSES)
    opt = adamw(model, 1e-3, 0.01)
    buffer = torch.empty(batch, xt.shape[1])
    for s in range(steps):
        idx = order[s * batch : (s + 1) * batch]
        float(train_step(model, opt, torch.index_select(xt, 0, idx, out=buffer), yt[idx]))


VARIANTS = {"autograd": autograd_steps, "cbmir": cbmir_steps}


def main() -> None:
    from cbmir.accelerate import cpu_info

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_360_000, help="train rows (the paper's: about 1.36 M)")
    ap.add_argument("--dims", default="768,256")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    info = cpu_info()
    steps_per_epoch = math.ceil(args.rows / args.batch)
    lines = [
        f"- CPU: {info['model']}, torch threads {torch.get_num_threads()}; 1-min load {os.getloadavg()[0]:.1f}",
        f"- {args.rows:,} train rows, {CLASSES} classes, batch {args.batch} ({steps_per_epoch:,} steps per epoch); "
        f"{args.steps} steps per timing, best of {args.repeats}",
        "",
        "| d | variant | ms per step | s per epoch | ratio to autograd |",
        "|---:|---|---:|---:|---:|",
    ]
    rng = np.random.default_rng(0)
    for d in (int(v) for v in args.dims.split(",")):
        x = rng.standard_normal((args.rows, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        xt, yt = torch.from_numpy(x), torch.as_tensor(rng.integers(0, CLASSES, args.rows))
        order = torch.randperm(args.rows, generator=torch.Generator().manual_seed(0))
        best = dict.fromkeys(VARIANTS, math.inf)
        for _ in range(args.repeats):
            for name, fn in VARIANTS.items():
                torch.manual_seed(0)
                start = time.perf_counter()
                fn(xt, yt, order, args.steps, args.batch)
                best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
        for name, seconds in best.items():
            lines.append(
                f"| {d} | {name} | {seconds * 1e3:.2f} | {seconds * steps_per_epoch:.1f} | "
                f"{best['autograd'] / seconds:.2f}x |"
            )
            print(lines[-1], flush=True)
        del x, xt
    lines[0] += f" (after: {os.getloadavg()[0]:.1f})"
    print("\n".join(lines[:2]))
    if not args.no_results:
        append_results(
            "bench_probe: linear-probe training step at the paper's shape",
            "python benchmarks/bench_probe.py " + " ".join(sys.argv[1:]),
            lines,
        )


if __name__ == "__main__":
    main()
