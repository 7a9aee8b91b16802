"""Benchmark: peak memory (RSS) of scoring a paper-scale evaluation with cbmir.metrics.

A child process builds what the metrics stage reads at the paper's scale: one string label per manifest row
(1.6 M index rows of 161 classes + the test queries), a neighbour table of `--queries` x 100 manifest rows,
then computes micro/macro modified P@1..100 (+ mAP, hit rate: `retrieval_metrics`) and percentile bootstrap
CIs for micro and macro P@1..100 (`bootstrap_ci`, `--boot` resamples). The parent reads the child's peak RSS
(`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`). Figures are printed and appended to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_memory.py                     # 160,000 queries (~10 % of 1.6 M)
    .venv/bin/python benchmarks/bench_memory.py --queries 20000 --boot 100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from results import append_results, command_line

LIMIT_GIB = 24


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(n_index: int, n_queries: int, k: int, n_boot: int) -> dict:
    """Run the scoring in this process; return timings and the RSS after imports."""
    import pandas as pd  # noqa: F401  (imported by cbmir.metrics; counted in the baseline)
    from cbmir.metrics import bootstrap_ci, label_matrices, precision_at_n, retrieval_metrics
    from cbmir.search import Neighbours

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import class_sizes

    base = rss_mib()
    rng = np.random.default_rng(0)
    sizes = class_sizes(n_index)
    names = np.array([f"XX/region{c % 16:02d}/pathology_{c:03d}" for c in range(len(sizes))], dtype=object)
    index_codes = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    query_codes = rng.choice(len(sizes), n_queries, p=sizes / sizes.sum())
    row_labels = names[np.concatenate([index_codes, query_codes])]  # one label per manifest row
    index_rows = np.arange(n_index)
    query_rows = np.arange(n_index, n_index + n_queries)
    # neighbours: 60 % drawn from the query's class, the rest from anywhere (a P@1 of about 0.6)
    by_class = np.argsort(index_codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    same = by_class[
        starts[query_codes][:, None] + rng.integers(0, sizes[query_codes][:, None], (n_queries, k))
    ]
    ids = np.where(rng.random((n_queries, k)) < 0.6, same, rng.integers(0, n_index, (n_queries, k)))
    nb = Neighbours(query_rows, ids, np.zeros(ids.shape, np.float32), index_rows=index_rows)
    t_inputs = rss_mib()

    t0 = time.perf_counter()
    table = retrieval_metrics(nb, row_labels, max_n=k)
    t_metrics = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels, q, counts, _ = label_matrices(nb, row_labels, max_n=k)
    prec = precision_at_n(labels, q, counts)
    cis = {avg: bootstrap_ci(prec, q, average=avg, n_boot=n_boot, seed=0) for avg in ("micro", "macro")}
    t_boot = time.perf_counter() - t0
    return {
        "rss_after_imports_mib": base,
        "rss_with_inputs_mib": t_inputs,
        "metrics_s": t_metrics,
        "bootstrap_s": t_boot,
        "p1_micro": float(table["micro"].iloc[0]),
        "p1_macro": float(table["macro"].iloc[0]),
        "p1_micro_ci": [float(cis["micro"]["low"].iloc[0]), float(cis["micro"]["high"].iloc[0])],
        "p1_macro_ci": [float(cis["macro"]["low"].iloc[0]), float(cis["macro"]["high"].iloc[0])],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_600_000, help="index rows (labels)")
    parser.add_argument("--queries", type=int, default=160_000, help="test queries (default ~10 %% of 1.6 M)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.n, args.queries, args.k, args.boot)))
        return 0

    cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--queries", str(args.queries)]
    cmd += ["--k", str(args.k), "--boot", str(args.boot)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    r = json.loads(out.stdout.strip().splitlines()[-1])
    lines = [
        f"- scoring {args.queries:,} queries x {args.k} neighbours against {args.n:,} index labels "
        f"(161 classes, string labels per manifest row): P@1..{args.k} micro/macro + mAP + hit rate, "
        f"then {args.boot} bootstrap resamples for micro and for macro P@1..{args.k}",
        f"- peak RSS of the child process: {peak_mib:,.0f} MiB ({peak_mib / 1024:.2f} GiB; limit {LIMIT_GIB} GiB: "
        f"{'fits' if peak_mib < LIMIT_GIB * 1024 else 'DOES NOT FIT'}); after imports {r['rss_after_imports_mib']:,.0f} "
        f"MiB, with inputs built {r['rss_with_inputs_mib']:,.0f} MiB",
        f"- time: retrieval_metrics {r['metrics_s']:.1f} s, bootstrap micro+macro {r['bootstrap_s']:.1f} s, "
        f"child wall {wall:.1f} s",
        f"- P@1 micro {r['p1_micro']:.4f} [{r['p1_micro_ci'][0]:.4f}, {r['p1_micro_ci'][1]:.4f}], macro "
        f"{r['p1_macro']:.4f} [{r['p1_macro_ci'][0]:.4f}, {r['p1_macro_ci'][1]:.4f}] (95 % CI)",
    ]
    print("\n".join(lines))
    if not args.no_append:
        command = command_line(__file__, argv)
        append_results("bench_memory: peak RSS of scoring a paper-scale evaluation", command, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
