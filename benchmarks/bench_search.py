"""Benchmark: exact FAISS search against approximate indexes (HNSW, IVF, IVF-PQ + exact re-ranking).

Synthetic clustered unit vectors at the paper's scale (`benchmarks/synthetic.py`: 1.6 M x 512, 161 classes of
13 to ~226,000 images, exact P@1 about 0.6) and held-out queries from the same distribution. For exact search
and each approximate setting: build time, memory (analytic index bytes and the RSS growth of this process),
queries/s, recall@10 against exact, and the change in micro/macro modified P@1 and P@10 (`cbmir.metrics`).
Also this machine's float32 matrix-multiply rate (NumPy sgemm of the shape exact search computes) and exact
search's effective rate 2*Q*N*D/s against it. Figures are printed and appended to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_search.py --only ivfpq       # 1.6 M x 512, 4,000 queries
    .venv/bin/python benchmarks/bench_search.py --only ivf ivfpq   # 1.6 M x 512, 4,000 queries
    .venv/bin/python benchmarks/bench_search.py --only hnsw        # 1.6 M (run times: benchmarks/README.md)
    .venv/bin/python benchmarks/bench_search.py --quick    # 100,000 x 512, 1,000 queries

With `--store DIR --manifest CSV` it measures the same on a real embedding store (`cbmir embed`): the manifest's
train rows form the index and its test rows query it (`--index-split`, `--query-split`), classes = full labels.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from cbmir import search as csearch
from cbmir.metrics import micro_macro, precision_at_n

sys.path.insert(0, str(Path(__file__).parent))
from results import append_results, best_seconds, command_line
from synthetic import HARD, SyntheticSpace, class_sizes, make_dataset  # noqa: E402

K = 100
BATCH = 4096  # cbmir.search.search's default query batch


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sgemm_rate(n_rows: int, dim: int, q: int = BATCH, repeat: int = 3) -> float:
    """GFLOP/s of NumPy float32 (q x dim) @ (dim x n_rows), best of `repeat`: the product exact search makes."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((q, dim), dtype=np.float32)
    b = rng.standard_normal((n_rows, dim), dtype=np.float32)
    out = np.empty((q, n_rows), dtype=np.float32)
    np.matmul(a, b.T, out=out)
    best = best_seconds(lambda: np.matmul(a, b.T, out=out), repeat)
    return 2 * q * n_rows * dim / best / 1e9


def run_search(index, xq: np.ndarray, k: int = K) -> tuple[np.ndarray, float]:
    """ids [Q, k] and seconds, searching in cbmir.search.search's query batches."""
    ids = np.empty((len(xq), k), dtype=np.int64)
    t0 = time.perf_counter()
    for start in range(0, len(xq), BATCH):
        _, ids[start : start + BATCH] = index.search(xq[start : start + BATCH], k)
    return ids, time.perf_counter() - t0


def exact_vs_sgemm(flat, xq: np.ndarray, n: int, d: int, rounds: int = 3) -> tuple[float, float]:
    """(exact search GFLOP/s as 2*Q*N*D/s, sgemm GFLOP/s of the same shape), best of interleaved rounds.

    Interleaving puts both under the same background load (this machine's 2 cores are shared).
    """
    q = xq[:1024]
    best_exact = best_sgemm = 0.0
    for _ in range(rounds):
        _, t = run_search(flat, q, min(K, n))
        best_exact = max(best_exact, 2 * len(q) * n * d / t / 1e9)
        best_sgemm = max(best_sgemm, sgemm_rate(min(n, 262_144), d, q=len(q), repeat=1))
    return best_exact, best_sgemm


def index_bytes(kind: str, n: int, d: int, index) -> int:
    """Analytic size of the index's own arrays (vectors, graph links, codes, ids, centroids)."""
    if kind == "flat":
        return n * d * 4
    if kind == "hnsw":
        links = faiss.vector_to_array(index.hnsw.neighbors).nbytes
        return n * d * 4 + links + 8 * (n + 1) + 4 * n  # vectors, links, offsets, levels
    ivf = faiss.extract_index_ivf(index)
    base = ivf.nlist * d * 4 + n * 8  # centroids, ids
    if kind == "ivf":
        return base + n * d * 4
    return base + n * ivf.code_size + n * d * 4  # ivfpq: PQ codes + the re-ranking vectors


def load_store(
    stores: list[str], manifest: str, index_split: str = "train", query_split: str = "test"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(index vectors, index class codes, query vectors, query class codes) from real embedding stores.

    Rows without an embedding (failed images) are left out; class codes number the manifest's full labels.
    """
    import pandas as pd
    from cbmir.manifest import read_manifest, row_labels, split_rows
    from cbmir.store import open_stores

    table = read_manifest(manifest)
    vectors = open_stores(stores, table)
    codes = pd.factorize(row_labels(table, "label"))[0].astype(np.int64)
    out = []
    for split in (index_split, query_split):
        rows = vectors.present(split_rows(table, split))
        if len(rows) == 0:
            raise ValueError(f"{manifest}: no rows with an embedding in split {split!r}")
        out += [csearch.l2_normalise(vectors.take(rows), split), codes[rows]]
    return tuple(out)


def quality(ids: np.ndarray, exact_ids: np.ndarray, lb: np.ndarray, lq: np.ndarray, counts: np.ndarray):
    """recall@10 against exact, and (micro, macro) modified P@1 and P@10."""
    recall = np.mean([len(np.intersect1d(a[:10], b[:10])) / 10 for a, b in zip(ids, exact_ids, strict=True)])
    micro, macro = micro_macro(precision_at_n(lb[ids[:, :10]], lq, counts), lq)
    return recall, micro[[0, 9]], macro[[0, 9]]


def settings(n: int, d: int, args: argparse.Namespace) -> list[tuple[str, dict, str, list[int]]]:
    """(index_type, build params, search-time attribute, search-time values to try), from the command line."""
    nlist = csearch.default_nlist(n)
    pq = {
        "nlist": nlist,
        "pq_m": csearch.default_pq_m(d, args.pq_nbits),
        "pq_nbits": args.pq_nbits,
        "k_factor": args.k_factor,
    }
    quick = args.quick
    return [
        (
            "hnsw",
            {"m": args.hnsw_m, "ef_construction": args.ef_construction},
            "efSearch",
            args.ef_search or ([128, 256] if quick else [128, 256, 512]),
        ),
        ("ivf", {"nlist": nlist}, "nprobe", args.nprobe or ([16, 64, 128] if quick else [32, 64, 128, 256])),
        ("ivfpq", pq, "nprobe", args.nprobe or ([64, 128] if quick else [128, 192, 256, 384])),
    ]


def set_search_param(index, kind: str, attr: str, value: int) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = value
    else:
        faiss.extract_index_ivf(index).nprobe = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_600_000, help="index vectors")
    parser.add_argument("--queries", type=int, default=4000, help="query vectors (about; >= 1 per class)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="100,000 index vectors, 1,000 queries")
    parser.add_argument(
        "--only", nargs="*", choices=["hnsw", "ivf", "ivfpq"], help="approximate kinds to run"
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument(
        "--hard",
        action="store_true",
        help="synthetic.HARD: more isotropic noise, harder for approximate search",
    )
    parser.add_argument("--store", action="append", help="real embedding store instead of synthetic data")
    parser.add_argument("--manifest", help="manifest CSV of --store (needed with it)")
    parser.add_argument("--index-split", default="train", help="with --store: the split searched")
    parser.add_argument("--query-split", default="test", help="with --store: the split that queries")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW links per node (M)")
    parser.add_argument("--ef-construction", type=int, default=40, help="HNSW efConstruction")
    parser.add_argument("--ef-search", type=int, nargs="+", help="HNSW efSearch values to try")
    parser.add_argument("--nprobe", type=int, nargs="+", help="IVF / IVF-PQ nprobe values to try")
    parser.add_argument("--pq-nbits", type=int, default=4, choices=(4, 8), help="IVF-PQ bits (4: fast-scan)")
    parser.add_argument("--k-factor", type=int, default=4, help="IVF-PQ re-ranked candidates per k")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.queries = 100_000, 1000
    if bool(args.store) != bool(args.manifest):
        parser.error("--store and --manifest go together")
    load0 = os.getloadavg()[0]

    t0 = time.perf_counter()
    if args.store:
        xb, lb, xq, lq = load_store(args.store, args.manifest, args.index_split, args.query_split)
        counts = np.bincount(lb, minlength=int(max(lb.max(), lq.max())) + 1)
        source = (
            f"embedding store {', '.join(args.store)} ({args.index_split} rows searched by "
            f"{args.query_split} rows of {args.manifest})"
        )
    else:
        space = SyntheticSpace.make(dim=args.dim, **HARD) if args.hard else None
        xb, lb, xq, lq = make_dataset(args.n, args.queries, args.dim, space=space)
        counts = np.bincount(lb, minlength=len(class_sizes(args.n)))
        source = f"synthetic{' (HARD variant)' * args.hard}"
    n, d = xb.shape
    k = min(K, n)
    t_gen = time.perf_counter() - t0
    present = counts[counts > 0]
    print(
        f"data: {n:,} x {d} index, {len(xq):,} queries, {len(present)} classes "
        f"({present.min()}..{present.max():,} per class); ready in {t_gen:.1f} s",
        flush=True,
    )

    rows = []
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    flat = csearch.build_index(xb, "flat")
    t_build = time.perf_counter() - t0
    rss_flat = rss_bytes() - rss0
    exact_ids, t_exact = run_search(flat, xq, k)
    eff, gflops = exact_vs_sgemm(flat, xq, n, d)
    del flat
    gc.collect()
    qps_exact = len(xq) / t_exact
    _, p_micro, p_macro = quality(exact_ids, exact_ids, lb, lq, counts)
    print(
        f"exact flat: {qps_exact:.1f} q/s, effective {eff:.0f} GFLOP/s = {eff / gflops:.0%} of sgemm; "
        f"P@1 micro {p_micro[0]:.4f} macro {p_macro[0]:.4f}, P@10 micro {p_micro[1]:.4f} "
        f"macro {p_macro[1]:.4f}",
        flush=True,
    )
    rows.append(("flat", "-", t_build, n * d * 4, rss_flat, qps_exact, 1.0, 0, 0, 0, 0))

    for kind, params, attr, values in settings(n, d, args):
        if args.only is not None and kind not in args.only:
            continue
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        index = csearch.build_index(xb, kind, **params)
        t_build = time.perf_counter() - t0
        rss_delta = rss_bytes() - rss0
        nbytes = index_bytes(kind, n, d, index)
        label = ", ".join(f"{k}={v}" for k, v in params.items())
        print(
            f"{kind} ({label}): built in {t_build:.1f} s, index {nbytes / 2**20:,.0f} MiB, "
            f"RSS +{rss_delta / 2**20:,.0f} MiB",
            flush=True,
        )
        for value in values:
            set_search_param(index, kind, attr, value)
            ids, t = run_search(index, xq, k)
            recall, micro, macro = quality(ids, exact_ids, lb, lq, counts)
            dmi, dma = micro - p_micro, macro - p_macro
            qps = len(xq) / t
            rows.append(
                (
                    kind,
                    f"{label}, {attr}={value}",
                    t_build,
                    nbytes,
                    rss_delta,
                    qps,
                    recall,
                    dmi[0],
                    dma[0],
                    dmi[1],
                    dma[1],
                )
            )
            print(
                f"  {attr}={value}: {qps:,.0f} q/s ({qps / qps_exact:.1f}x exact), recall@10 {recall:.4f}, "
                f"dP@1 {dmi[0]:+.4f}/{dma[0]:+.4f}, dP@10 {dmi[1]:+.4f}/{dma[1]:+.4f} (micro/macro)",
                flush=True,
            )
        del index
        gc.collect()

    table = [
        "| index | setting | build s | index MiB | RSS +MiB | q/s | x exact | recall@10 | dP@1 micro | "
        "dP@1 macro | dP@10 micro | dP@10 macro |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, setting, tb, nb, rss, qps, rec, a, b, c, e in rows:
        table.append(
            f"| {kind} | {setting} | {tb:.1f} | {nb / 2**20:,.0f} | {rss / 2**20:,.0f} | {qps:,.0f} | "
            f"{qps / qps_exact:.1f} | {rec:.4f} | {a:+.4f} | {b:+.4f} | {c:+.4f} | {e:+.4f} |"
        )
    good = [
        r for r in rows[1:] if r[6] >= 0.95 and r[5] >= 10 * qps_exact and max(abs(r[7]), abs(r[8])) <= 0.005
    ]
    verdict = "goal (recall@10 >= 0.95, >= 10x exact q/s, |dP@1| <= 0.005 micro and macro) met by: " + (
        "; ".join(f"{r[0]} {r[1]} ({r[5] / qps_exact:.1f}x, recall {r[6]:.3f})" for r in good) or "none"
    )
    lines = [
        f"- data: {source} {n:,} x {d} float32 unit vectors, {len(present)} classes ({present.min()}.."
        f"{present.max():,} per class), {len(xq):,} held-out queries, k = {k}, query batch {BATCH}, "
        f"faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads; load average at start {load0:.1f}",
        f"- exact P@1 micro {p_micro[0]:.4f} macro {p_macro[0]:.4f}; P@10 micro {p_micro[1]:.4f} "
        f"macro {p_macro[1]:.4f}",
        f"- float32 matmul rate (NumPy, (1024 x {d}) @ ({d} x {min(n, 262_144):,})): {gflops:.0f} GFLOP/s; "
        f"exact flat search (1,024 queries, 2*Q*N*D/s): {eff:.0f} GFLOP/s = {eff / gflops:.0%} of it "
        "(best of 3 interleaved rounds)",
        f"- {verdict}",
        "",
        *table,
    ]
    print("\n".join(lines))
    if not args.no_append:
        command = command_line(__file__, argv)
        append_results("bench_search: exact vs approximate nearest-neighbour search", command, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
