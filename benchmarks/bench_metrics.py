"""Benchmark: micro + macro modified precision@1..K, vectorised NumPy vs a per-query pandas baseline.

Synthetic neighbour labels (seeded): `--queries` queries x `--k` neighbours over `--classes` classes with
skewed index class sizes (some smaller than K, so n = min(N, n_c) matters). The baseline implements the same
definition one query at a time with pandas; it runs on `--baseline-queries` queries and its time is
extrapolated linearly to all queries (said so in the output). Both are checked to agree on that subset.
Figures are printed and appended to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_metrics.py                  # 20,000 queries
    .venv/bin/python benchmarks/bench_metrics.py --queries 400000
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
from cbmir.metrics import micro_macro, precision_at_n
from results import append_results, command_line


def synthetic(n_queries: int, k: int, n_classes: int, seed: int = 0):
    """(neighbour_labels [Q, K], query_labels [Q], index_class_counts [C])."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(1, (20_000 * np.exp(-np.linspace(0, 8, n_classes))).astype(np.int64))  # 20,000 .. 6
    q = rng.choice(n_classes, size=n_queries, p=counts / counts.sum())
    confused = rng.choice(n_classes, size=(n_queries, k), p=counts / counts.sum())
    nb = np.where(rng.random((n_queries, k)) < 0.6, q[:, None], confused)
    return nb, q, counts


def fast(nb, q, counts):
    return micro_macro(precision_at_n(nb, q, counts), q)


def pandas_baseline(nb, q, counts):
    """One query at a time: hits as a pandas Series, cumulative sum, P@N = hits[:n].sum() / n; groupby for macro."""
    k = nb.shape[1]
    ns = np.arange(1, k + 1)
    rows = []
    for labels, cls in zip(nb, q, strict=True):
        hits = (pd.Series(labels) == cls).cumsum()
        n = np.minimum(ns, counts[cls])
        rows.append(hits.iloc[n - 1].to_numpy() / n)
    per_query = pd.DataFrame(rows, columns=ns)
    micro = per_query.mean(axis=0).to_numpy()
    macro = per_query.groupby(q).mean().mean(axis=0).to_numpy()
    return micro, macro


def best_of(fn, *args, repeat: int = 3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--baseline-queries", type=int, default=2_000)
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)

    nb, q, counts = synthetic(args.queries, args.k, args.classes)
    t_fast, (micro, macro) = best_of(fast, nb, q, counts)
    sub = min(args.baseline_queries, args.queries)
    t_base_sub, (b_micro, b_macro) = best_of(pandas_baseline, nb[:sub], q[:sub], counts, repeat=1)
    f_micro, f_macro = fast(nb[:sub], q[:sub], counts)
    # means over up to 400,000 values summed in different orders differ by a few ulps of the sum: rtol 1e-10
    agree = np.allclose(f_micro, b_micro, rtol=1e-10, atol=1e-12) and np.allclose(
        f_macro, b_macro, rtol=1e-10, atol=1e-12
    )
    t_base = t_base_sub * args.queries / sub
    extrapolated = sub < args.queries
    lines = [
        f"- fast (NumPy, best of 3): {t_fast:.3f} s for {args.queries:,} queries x {args.k} x {args.classes} classes",
        f"- pandas per-query baseline: {t_base_sub:.2f} s on {sub:,} queries"
        + (f" -> {t_base:.1f} s extrapolated linearly to {args.queries:,}" if extrapolated else ""),
        f"- ratio baseline / fast: {t_base / t_fast:.0f}x"
        + (" (baseline extrapolated)" if extrapolated else ""),
        f"- numbers agree on the {sub:,}-query subset (rtol 1e-10, atol 1e-12): {agree}",
        f"- micro P@1/3/5/10: {micro[0]:.4f} {micro[2]:.4f} {micro[4]:.4f} {micro[9]:.4f}; "
        f"macro P@1/3/5/10: {macro[0]:.4f} {macro[2]:.4f} {macro[4]:.4f} {macro[9]:.4f}",
    ]
    print("\n".join(lines))
    if not args.no_append:
        command = command_line(__file__, argv)
        append_results(f"bench_metrics: modified precision@1..{args.k}, micro + macro", command, lines)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
