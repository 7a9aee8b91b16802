"""What bf16 extraction changes on RadMini: per-image cosine to fp32, and micro/macro P@1 and P@10.

Each encoder is extracted twice into temporary stores (fp32, bf16; `cbmir.accelerate` as the extraction runs it),
then test-split queries search the train split exactly (cosine) and the paired bootstrap over queries gives the
difference bf16 - fp32 with its 95 % interval. Appends a table to benchmarks/RESULTS.md.

    python benchmarks/bench_precision.py --models dinov2-s14-imgfocus,xception-imagenet
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import append_results


def neighbour_labels(
    emb: np.ndarray, codes: np.ndarray, query: np.ndarray, index: np.ndarray, k: int
) -> np.ndarray:
    """Class codes of the k nearest index rows (inner product of unit rows) of every query row."""
    sims = emb[query] @ emb[index].T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return codes[index][order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dinov2-s14-imgfocus,xception-imagenet,random-vit,litemedsam")
    parser.add_argument("--manifest", default="data_splits/radmini.csv")
    parser.add_argument("--data-root", default="data/radmini")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cbmir import metrics
    from cbmir.extract import extract_embeddings
    from cbmir.manifest import read_manifest, row_labels

    manifest = read_manifest(args.manifest)
    _, codes = metrics.encode_labels(row_labels(manifest))
    query = np.flatnonzero(manifest["split"].to_numpy() == "test")
    index = np.flatnonzero(manifest["split"].to_numpy() != "test")
    counts = np.bincount(codes[index], minlength=codes.max() + 1)
    lines = [
        f"- RadMini {len(manifest)} images: {len(query)} test queries against {len(index)} other images, exact cosine; "
        f"difference = bf16 - fp32 with paired-bootstrap 95 % interval ({args.bootstrap} resamples over queries)",
        "",
        "| encoder | cosine min / median | P@1 micro | P@1 macro | P@10 micro | P@10 macro | s fp32 / bf16 | steps (bf16) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            stores, seconds = {}, {}
            for bf16 in (False, True):
                start = time.perf_counter()
                stores[bf16] = extract_embeddings(
                    manifest,
                    args.data_root,
                    name,
                    Path(tmp) / f"{name}-{bf16}",
                    batch_size=16,
                    bf16=bf16,
                    device="cpu",
                )
                seconds[bf16] = time.perf_counter() - start
            a, b = (np.asarray(stores[f].embeddings) for f in (False, True))
            assert list(stores[False].ids) == list(manifest["filepath"]) == list(stores[True].ids)
            cos = np.sum(a * b, axis=1)
            per = {}
            for key, emb in (("fp32", a), ("bf16", b)):
                nb = neighbour_labels(emb, codes, query, index, 10)
                per[key] = metrics.precision_at_n(nb, codes[query], counts)[:, [0, 9]]
            cells = []
            for average in ("micro", "macro"):
                diff = metrics.paired_bootstrap(
                    per["bf16"], per["fp32"], codes[query], average=average, n_boot=args.bootstrap
                )
                cells.append(
                    [f"{r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}]" for r in diff.itertuples()]
                )
            steps = "; ".join(stores[True].provenance.get("speed", {}).get("steps", []))
            row = (
                f"| {name} | {cos.min():.5f} / {np.median(cos):.5f} | {cells[0][0]} | {cells[1][0]} | {cells[0][1]} "
                f"| {cells[1][1]} | {seconds[False]:.0f} / {seconds[True]:.0f} | {steps} |"
            )
            print(row, flush=True)
            lines.append(row)
    if not args.no_append:
        command = "python benchmarks/bench_precision.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        append_results("bench_precision: bf16 vs fp32 embeddings on RadMini", command, lines,
                       machine_extra="shared machine (timings indicative only)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
