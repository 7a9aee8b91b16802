"""What bf16 extraction changes on RadMini: per-image cosine to fp32, and micro/macro P@1 and P@10.

Each encoder is extracted twice into temporary stores (fp32, bf16; `cbmir.accelerate` and torch.compile as the
report's extraction runs them) over the report's own rows (the config's manifest and row cap), then test-split
queries search the train split exactly (cosine). The paired cluster bootstrap over patients gives the difference
bf16 - fp32 with its 95 % interval, set against the fp32 estimate's own interval (the bootstrap noise the report
shows): "within noise" means the paired interval contains 0 and the difference is smaller than that half-width.
Appends a table to benchmarks/RESULTS.md.

    python benchmarks/bench_precision.py                    # litemedsam, dinov2, xception, random-vit on RadMini
    python benchmarks/bench_precision.py --models dinov2-s14-imgfocus --no-append
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import append_results, command_line


def neighbour_labels(
    emb: np.ndarray, codes: np.ndarray, query: np.ndarray, index: np.ndarray, k: int
) -> np.ndarray:
    """Class codes of the k nearest index rows (inner product of unit rows) of every query row."""
    sims = emb[query] @ emb[index].T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return codes[index][order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="litemedsam,dinov2-s14-imgfocus,xception-imagenet,random-vit")
    parser.add_argument("--config", default="configs/radmini.yaml", help="manifest, data root and row cap")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cbmir import metrics
    from cbmir.extract import extract_embeddings
    from cbmir.manifest import row_labels
    from cbmir.pipeline import Context

    ctx = Context.open(args.config)  # the report's own rows: its manifest and row cap
    cfg, manifest = ctx.cfg, ctx.manifest.reset_index(drop=True)
    _, codes = metrics.encode_labels(row_labels(manifest))
    split = manifest["split"].to_numpy()
    query, index = np.flatnonzero(split == "test"), np.flatnonzero(split == "train")
    cases = manifest["patient_id"].to_numpy()[query] if "patient_id" in manifest else None
    counts = np.bincount(codes[index], minlength=codes.max() + 1)
    n_cases = len(set(cases)) if cases is not None else len(query)
    lines = [
        f"- {cfg.name}: the report's {len(manifest)} rows ({args.config}); {len(query)} test queries from {n_cases} "
        f"patients against the {len(index)} train images, exact cosine. Difference = bf16 - fp32 with its paired "
        f"cluster-bootstrap 95 % interval over patients ({args.bootstrap} resamples); noise = half-width of the "
        "fp32 estimate's own 95 % interval (the uncertainty every figure in the report carries)",
        "",
        "| encoder | cosine min / median | P@1 micro | P@1 macro | P@10 micro | P@10 macro | noise P@1 micro / macro "
        "| within noise | extraction s fp32 / bf16 | steps (bf16) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            stores, seconds = {}, {}
            for bf16 in (False, True):
                start = time.perf_counter()
                stores[bf16] = extract_embeddings(
                    manifest, cfg.data_root, name, Path(tmp) / f"{name}-{bf16}",
                    batch_size=cfg.batch_size_for(name), bf16=bf16, device="cpu", compile=cfg.compile,
                )  # fmt: skip
                seconds[bf16] = time.perf_counter() - start
            a, b = (np.asarray(stores[f].embeddings) for f in (False, True))
            assert list(stores[False].ids) == list(manifest["filepath"]) == list(stores[True].ids)
            cos = np.sum(a * b, axis=1)
            per = {}
            for key, emb in (("fp32", a), ("bf16", b)):
                nb = neighbour_labels(emb, codes, query, index, 10)
                per[key] = metrics.precision_at_n(nb, codes[query], counts)[:, [0, 9]]
            cells, noise, within = [], [], True
            for average in ("micro", "macro"):
                diff = metrics.paired_bootstrap(
                    per["bf16"], per["fp32"], codes[query], cases, average=average, n_boot=args.bootstrap
                )
                own = metrics.bootstrap_ci(
                    per["fp32"], codes[query], cases, average=average, n_boot=args.bootstrap
                )
                half = ((own["high"] - own["low"]) / 2).to_numpy()
                noise.append(half[0])
                within &= bool(((diff["low"] <= 0) & (diff["high"] >= 0)).all())
                within &= bool((diff["difference"].abs().to_numpy() <= half).all())
                cells.append(
                    [f"{r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}]" for r in diff.itertuples()]
                )
            steps = "; ".join(stores[True].provenance.get("speed", {}).get("steps", []))
            row = (
                f"| {name} | {cos.min():.5f} / {np.median(cos):.5f} | {cells[0][0]} | {cells[1][0]} | {cells[0][1]} "
                f"| {cells[1][1]} | {noise[0]:.3f} / {noise[1]:.3f} | {'yes' if within else 'NO'} "
                f"| {seconds[False]:.0f} / {seconds[True]:.0f} | {steps} |"
            )
            print(row, flush=True)
            lines.append(row)
    if not args.no_append:
        command = command_line(__file__, argv)
        append_results("bench_precision: bf16 vs fp32 embeddings on RadMini", command, lines,
                       machine_extra=f"torch threads {__import__('torch').get_num_threads()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
