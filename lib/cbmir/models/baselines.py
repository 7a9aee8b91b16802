"""Baselines that need no weights: raw downsampled pixels (the random ViT lives in timm_models)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as F

from .base import Encoder


class GreyPixels:
    """PIL -> [1, size, size] greyscale tensor in [0, 1] (bilinear, antialiased)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"raw-pixels size must be >= 1, got {size}")
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        grey = image.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return F.pil_to_tensor(grey).float() / 255.0


def load_raw_pixels(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    """`raw-pixels` (32x32 = 1024-d) or `raw-pixels:N` (NxN)."""
    size = int(entry.get("options", {}).get("size", 32))
    return Encoder(
        spec=entry["spec"],
        module=nn.Flatten(1).eval(),
        transform=GreyPixels(size),
        dim=size * size,
        embedding_rule=f"greyscale image resized to {size}x{size} (bilinear), flattened",
        provenance={
            "preprocessing": {"kind": "grey", "resize": size, "interpolation": "bilinear", "scale": "unit"}
        },
    )
