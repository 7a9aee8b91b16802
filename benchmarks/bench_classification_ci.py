"""Benchmark: the classification bootstrap (notebook 7's intervals), all draws at once vs a scikit-learn loop.

Synthetic test scores of one head (seeded): `--queries` test queries of `--cases` cases over `--classes`
classes with skewed class sizes (so small classes drop out of some draws), either kNN-like (shares among k = 10
neighbours: few distinct values) or probe-like (continuous softmax). The baseline is what notebook 7 ran
before: `classification_metrics` (scikit-learn) once per draw; it runs `--baseline-draws` draws and its time is
extrapolated linearly to `--draws` (said so in the output). `metric_draws` runs all draws; both are checked to
agree on the baseline's draws. `--against REF` also times `metric_draws` as it was at git revision REF on the
same draws (and checks that both agree). `--own-cases` gives each query its own case, as in the authors'
published splits (no patient ids), where the rarest classes have one test image and drop out of about a third
of the draws. Figures are printed and appended to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_classification_ci.py                     # the 0.1-scale rehearsal's shape
    .venv/bin/python benchmarks/bench_classification_ci.py --queries 170000 --cases 60000   # the paper's
    .venv/bin/python benchmarks/bench_classification_ci.py --queries 160000 --own-cases --against HEAD~1
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cbmir.analyses.classify import case_draw_counts
from cbmir.classification import classification_metrics, metric_draws
from results import append_results, cpu_name


def synthetic(n_queries: int, n_cases: int | None, n_classes: int, head: str, seed: int = 0):
    """(labels [Q], scores [Q, C], cases [Q]): cases of one class each, class sizes falling 1000-fold;
    `n_cases` None: one case per query."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(-np.linspace(0, np.log(1000), n_classes))
    if n_cases is None:
        n_cases, cases = n_queries, np.arange(n_queries)
    else:
        cases = np.sort(rng.integers(0, n_cases, n_queries))
    case_class = rng.choice(n_classes, size=n_cases, p=sizes / sizes.sum())
    y = case_class[cases]
    if head == "knn":
        k = 10
        votes = rng.choice(n_classes, size=(n_queries, k), p=sizes / sizes.sum())
        votes = np.where(rng.random((n_queries, k)) < 0.5, y[:, None], votes)
        scores = np.zeros((n_queries, n_classes))
        np.add.at(scores, (np.repeat(np.arange(n_queries), k), votes.ravel()), 1.0 / k)
    else:
        logits = rng.normal(size=(n_queries, n_classes)) + 2.0 * np.eye(n_classes)[y]
        scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, scores, cases


def metric_draws_at(ref: str):
    """`metric_draws` as lib/cbmir/classification.py defines it at git revision `ref`."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(
        ["git", "show", f"{ref}:lib/cbmir/classification.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "classification_at_ref.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("classification_at_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.metric_draws


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=16_000)
    ap.add_argument("--cases", type=int, default=6_000)
    ap.add_argument("--classes", type=int, default=161)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--baseline-draws", type=int, default=5)
    ap.add_argument("--own-cases", action="store_true", help="one case per query (ignores --cases)")
    ap.add_argument("--against", metavar="REF", help="also time metric_draws at this git revision")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    earlier = metric_draws_at(args.against) if args.against else None
    rows = []
    for head in ("knn", "probe"):
        y, scores, cases = synthetic(args.queries, None if args.own_cases else args.cases, args.classes, head)
        codes, counts = case_draw_counts(cases, args.draws, seed=0)
        t0 = time.perf_counter()
        base = [
            list(classification_metrics(y, scores, sample_weight=counts[b][codes]).metrics.values())
            for b in range(args.baseline_draws)
        ]
        loop_s = (time.perf_counter() - t0) / args.baseline_draws * args.draws
        t0 = time.perf_counter()
        fast = metric_draws(y, scores, codes, counts)
        fast_s = time.perf_counter() - t0
        diff = float(np.nanmax(np.abs(fast[: args.baseline_draws] - np.array(base))))
        if not diff < 1e-9:
            raise SystemExit(f"{head}: metric_draws differs from the loop by {diff:.2e}")
        then = ""
        if earlier is not None:
            t0 = time.perf_counter()
            old = earlier(y, scores, codes, counts)
            old_s = time.perf_counter() - t0
            old_diff = float(np.nanmax(np.abs(fast - old)))
            if not old_diff < 1e-9:
                raise SystemExit(
                    f"{head}: metric_draws differs from its version at {args.against} by {old_diff:.2e}"
                )
            then = f" {old_s:,.1f} | {old_s / fast_s:.2f}x |"
        rows.append(
            f"| {head} | {args.queries:,} | {len(np.unique(codes)):,} | {args.classes} | {args.draws} | "
            f"{loop_s:,.0f} (extrapolated from {args.baseline_draws}) | {fast_s:,.1f} | {loop_s / fast_s:,.0f}x | "
            f"{diff:.1e} |{then}"
        )
        print(rows[-1], flush=True)
    lines = [
        f"- CPU: {cpu_name()}; one process (scikit-learn runs on one thread; metric_draws on up to 8 threads)",
        "- baseline = `classification_metrics` (scikit-learn) per draw, as notebook 7 computed its intervals "
        "before; fast = `cbmir.classification.metric_draws`, every draw at once; same draws (cluster bootstrap "
        "over cases)"
        + (f"; earlier = `metric_draws` at git revision {args.against} on the same draws" if earlier else ""),
        "",
        "| head | test queries | cases | classes | draws | loop s | all draws at once s | speed-up | max abs diff |"
        + (" earlier s | earlier / now |" if earlier else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if earlier else ""),
        *rows,
    ]
    print("\n".join(lines))
    if not args.no_append:
        append_results(
            "bench_classification_ci: classification bootstrap, all draws at once vs a loop",
            " ".join(["python", *sys.argv]),
            lines,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
