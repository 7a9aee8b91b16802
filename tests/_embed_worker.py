"""Run one extraction with a tiny deterministic encoder (a subprocess for the kill-and-resume tests).

usage: python _embed_worker.py MANIFEST_CSV DATA_ROOT OUT_DIR CHUNK_SIZE [--sleep S] [--die-after-replace N]
                              [--engine local|ray] [--ray-address ADDRESS]
`--sleep` slows each batch so that a test can SIGKILL the run mid-way; `--die-after-replace N` makes the
process SIGKILL itself right after its N-th `os.replace` (an atomic file landing), to hit exact points.
`--engine ray` runs on the Ray cluster at `--ray-address` (this process is then only the driver); the last line
printed says whether `ray` was imported.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np
import pandas as pd
import torch
from cbmir.models.base import Encoder
from PIL import Image

DIM = 6


class _Tiny(torch.nn.Module):
    def __init__(self, sleep: float = 0.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.head = torch.nn.Linear(8, DIM)
        self.sleep = sleep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sleep:
            time.sleep(self.sleep)
        return self.head(self.conv(x).mean(dim=(2, 3)))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """Resize to 16x16 and scale to [0, 1], channels first (no torchvision: keeps the subprocess light)."""
    arr = np.asarray(image.convert("RGB").resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def tiny_encoder(sleep: float = 0.0, spec: str = "tiny-test") -> Encoder:
    """The same weights every time (seeded); 16x16 input."""
    torch.manual_seed(0)
    module = _Tiny(sleep)
    return Encoder(spec, module, to_tensor, DIM, "mean-pooled conv -> linear", {"preprocessing": "resize 16"})


def die_after_replace(n: int) -> None:
    """SIGKILL this process right after the n-th successful os.replace."""
    real, count = os.replace, [0]

    def replace(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace


def main(argv: list[str]) -> int:
    from cbmir.extract import extract_embeddings

    p = argparse.ArgumentParser()
    p.add_argument("manifest")
    p.add_argument("data_root")
    p.add_argument("out")
    p.add_argument("chunk_size", type=int)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--die-after-replace", type=int, default=0)
    p.add_argument("--engine", default="local")
    p.add_argument("--ray-address", default=None)
    args = p.parse_args(argv)
    if args.die_after_replace:
        die_after_replace(args.die_after_replace)
    manifest = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
    store = extract_embeddings(
        manifest,
        args.data_root,
        tiny_encoder(args.sleep),
        args.out,
        batch_size=4,
        num_workers=0,
        chunk_size=args.chunk_size,
        engine=args.engine,
        ray_address=args.ray_address,
    )
    print(len(store), len(store.failed))
    print("ray imported" if "ray" in sys.modules else "ray not imported")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
