"""FAISS with the OpenBLAS kernels its bundled library detects against the ones cbmir chooses (`cbmir.blas`).

Runs the same FAISS work twice, each in a fresh process (OpenBLAS picks its kernels once, when it is loaded):

- `detected`: `OPENBLAS_CORETYPE` set empty, so OpenBLAS 0.3.15 (bundled with faiss-cpu) detects the CPU itself;
- `cbmir`: the value `cbmir.blas.prefer_fast_kernels` sets from the CPU's instruction sets.

The work, on seeded synthetic embeddings (`synthetic.py`, the paper's class sizes scaled to `--n` rows): build the
config's default IVF-PQ index (`cbmir.search.build_index`, coarse k-means + 4-bit PQ + adding every row), search
`--queries` queries in it (top 100, exact re-ranking), and search them exactly (`flat`). Seconds per step, best of
`--repeats`, and the ratio detected / cbmir. Printed, and appended to RESULTS.md unless `--no-results`.

    .venv/bin/python benchmarks/bench_blas_core.py [--n 400000] [--dim 512] [--queries 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import append_results  # noqa: E402

STEPS = ("IVF-PQ build", "IVF-PQ search", "flat search")

WORKER = """
import json, sys, time
sys.path.insert(0, {bench!r})
import cbmir
from cbmir.blas import faiss_blas_core
from cbmir.search import build_index
from synthetic import make_dataset

x, _, q, _ = make_dataset(n={n}, n_queries={queries}, dim={dim}, seed=0)
best = dict.fromkeys({steps!r}, float("inf"))
for _ in range({repeats}):
    t = time.perf_counter(); index = build_index(x, "ivfpq"); best["IVF-PQ build"] = min(best["IVF-PQ build"], time.perf_counter() - t)
    t = time.perf_counter(); index.search(q, 100); best["IVF-PQ search"] = min(best["IVF-PQ search"], time.perf_counter() - t)
    flat = build_index(x, "flat")
    t = time.perf_counter(); flat.search(q, 100); best["flat search"] = min(best["flat search"], time.perf_counter() - t)
print("RESULT", json.dumps({{"core": faiss_blas_core(), "seconds": best}}))
"""


def run(coretype: str | None, args: argparse.Namespace) -> dict:
    """One fresh process; `coretype` "" = OpenBLAS's own detection, None = what cbmir chooses."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    code = WORKER.format(
        bench=str(Path(__file__).parent), n=args.n, queries=args.queries, dim=args.dim, steps=STEPS,
        repeats=args.repeats,
    )  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    from cbmir.accelerate import cpu_info

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    detected, chosen = run("", args), run(None, args)
    lines = [
        f"- CPU: {cpu_info()['model']}; 1-min load {load:.1f} before, {os.getloadavg()[0]:.1f} after",
        f"- {args.n:,} x {args.dim} synthetic index vectors (paper class sizes scaled), {args.queries:,} queries, "
        f"top 100; IVF-PQ with cbmir's defaults; best of {args.repeats}, each setting in a fresh process",
        "",
        f"| step | detected: {detected['core']} (s) | cbmir: {chosen['core']} (s) | ratio detected / cbmir |",
        "|---|---:|---:|---:|",
    ]
    for step in STEPS:
        a, b = detected["seconds"][step], chosen["seconds"][step]
        lines.append(f"| {step} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    print("\n".join(lines))
    if not args.no_results:
        append_results(
            "bench_blas_core: FAISS with the OpenBLAS kernels it detects vs the ones cbmir chooses",
            "python benchmarks/bench_blas_core.py " + " ".join(sys.argv[1:]),
            lines,
        )


if __name__ == "__main__":
    main()
