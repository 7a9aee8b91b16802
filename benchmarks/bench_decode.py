"""Decoding and resizing per image: the RGB path, greyscale kept as one channel, and the decode cache.

On `--n` chest X-ray files (greyscale JPEGs of about 1776 x 1416 from pneumonia-model-package, every second one
re-saved as PNG), on one torch thread (as a DataLoader worker), for each transform:
- rgb: `load_image` as RGB, then the transform: what extraction did before greyscale images were kept as one
  channel (the baseline of the ratios);
- grey: `cbmir.extract.ManifestImages` without a cache: greyscale files resized as one channel;
- miss: `ManifestImages` with an empty decode cache (`cbmir.decode_cache`): decode, resize, store the pixels;
- hit: `ManifestImages` reading that cache: no decoding, no resizing.
Every path's tensors are compared with rgb's (largest absolute difference). Best of `--rounds` per path.

Transforms: the report's offline models (their own `transform`, as `load_encoder` builds it) and the paper's nine
presets (`Preprocess` from the preset; open_clip's eval transform for BiomedCLIP and CLIP ViT-L/14, whose
published configs give open_clip's defaults). For the nine, a run that decodes once per model (grey) is set
against one that shares the decode cache: one miss per distinct resize setting, a hit for every other model.

    python benchmarks/bench_decode.py
    python benchmarks/bench_decode.py --n 16 --rounds 1 --no-append
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_extraction import write_images
from results import append_results, command_line

REPORT_MODELS = "raw-pixels,random-vit,litemedsam,dinov2-s14-imgfocus,xception-imagenet"


def paper_transforms() -> dict[str, object]:
    """The paper's nine presets' transforms, built without weights."""
    from cbmir.models import presets
    from cbmir.models.loaders.openclip import openclip_transform
    from cbmir.models.transforms import Preprocess
    from paper_architectures import PAPER_NINE

    out = {}
    for name in PAPER_NINE:
        pre = presets()[name].preprocess
        out[name] = (
            Preprocess(pre)
            if pre is not None
            else openclip_transform({"vision_cfg": {"image_size": 224}}, {})[0]
        )
    return out


def report_transforms(names: str) -> dict[str, object]:
    from cbmir.models import load_encoder

    return {name: load_encoder(name).transform for name in names.split(",")}


def timed(fn, n: int, rounds: int) -> tuple[float, list[torch.Tensor]]:
    """(best seconds per image over `rounds`, the tensors of the last round) of `fn(i)` for i < n."""
    best, out = float("inf"), []
    for _ in range(rounds):
        start = time.perf_counter()
        out = [fn(i) for i in range(n)]
        best = min(best, (time.perf_counter() - start) / n)
    return best, out


def measure(transform, root: Path, paths: list[str], cache_root: Path, rounds: int) -> dict[str, float]:
    """ms per image of the rgb, grey, miss and hit paths, and the largest difference to rgb's tensors."""
    from cbmir.decode_cache import DecodeCache, geometry_key
    from cbmir.extract import ManifestImages
    from cbmir.images import load_image

    n = len(paths)
    row = {}
    rgb_s, reference = timed(lambda i: transform(load_image(root / paths[i])), n, rounds)
    row["rgb"] = 1000 * rgb_s
    grey = ManifestImages(root, paths, transform)
    grey_s, tensors = timed(lambda i: grey[i][1], n, rounds)
    row["grey"], diffs = 1000 * grey_s, [tensors]
    if geometry_key(transform) is not None:
        misses = []
        for r in range(rounds):  # a fresh, empty cache each round
            cache = DecodeCache(cache_root / f"round{r}", transform)
            cached = ManifestImages(root, paths, transform, cache=cache)
            miss_s, tensors = timed(lambda i, c=cached: c[i][1], n, 1)
            misses.append(miss_s)
        row["miss"] = 1000 * min(misses)
        hit_s, hits = timed(lambda i: cached[i][1], n, rounds)
        row["hit"] = 1000 * hit_s
        diffs += [tensors, hits]
    row["max_diff"] = max(
        float((a - b).abs().max()) for out in diffs for a, b in zip(out, reference, strict=True)
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path; the best is kept")
    parser.add_argument("--models", default=REPORT_MODELS, help="the report's models (comma-separated)")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cbmir.decode_cache import geometry_key

    torch.set_num_threads(1)  # as a DataLoader worker
    lines = [
        f"- {args.n} chest X-ray files (greyscale JPEG ~1776 x 1416, every second one re-saved as PNG), one torch "
        f"thread, best of {args.rounds}; ms per image; ratios against rgb (the path before greyscale images were "
        "kept as one channel); max |diff| = largest absolute difference of any path's tensors to rgb's",
        "",
        "| transform | rgb ms | grey ms | grey / rgb | cache miss ms | cache hit ms | hit / rgb | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        paths = list(write_images(root, args.n)["filepath"])
        transforms = {**report_transforms(args.models), **paper_transforms()}
        for name, transform in transforms.items():
            row = rows[name] = measure(transform, root, paths, Path(tmp) / "cache" / name, args.rounds)
            miss, hit, rgb = row.get("miss"), row.get("hit"), row["rgb"]
            line = (
                f"| {name} | {rgb:.1f} | {row['grey']:.1f} | {row['grey'] / rgb:.2f} "
                f"| {'n/a' if miss is None else f'{miss:.1f}'} | {'n/a' if hit is None else f'{hit:.2f}'} "
                f"| {'n/a' if hit is None else f'{hit / rgb:.3f}'} | {row['max_diff']:.1e} |"
            )
            print(line, flush=True)
            lines.append(line)
        nine = paper_transforms()
        keys: dict[str, list[str]] = {}
        for name, transform in nine.items():
            keys.setdefault(repr(sorted((geometry_key(transform) or {"alone": name}).items())), []).append(
                name
            )
        per_model = sum(rows[name]["grey"] for name in nine)
        shared = sum(
            rows[group[0]]["miss"] + sum(rows[m]["hit"] for m in group[1:]) for group in keys.values()
        )
        groups = "; ".join(" = ".join(group) for group in keys.values() if len(group) > 1)
        summary = (
            f"- the paper's nine presets: {len(keys)} distinct resize settings ({groups} share theirs). Decoding "
            f"per model: {per_model:.1f} ms per image for the nine (grey); sharing the decode cache: {shared:.1f} ms "
            f"(one miss per setting, hits for the rest): {shared / per_model:.2f}x; against the RGB path "
            f"({sum(rows[name]['rgb'] for name in nine):.1f} ms): {shared / sum(rows[name]['rgb'] for name in nine):.2f}x"
        )
        print(summary, flush=True)
        lines += ["", summary]
    if not args.no_append:
        append_results(
            "bench_decode: decode + resize per image, greyscale as one channel and the decode cache",
            command_line(__file__, argv),
            lines,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
