"""Baselines that need no weights: the `raw_pixels` family (the random ViT lives in timm_models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn
from torchvision.transforms import functional as F

from ..registry import Loaded, LoaderFamily, Preset, PresetError, WeightsLocation, register_family


class GreyPixels:
    """PIL -> [1, size, size] greyscale tensor in [0, 1] (bilinear, antialiased)."""

    accepts_grey = True

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"raw-pixels size must be >= 1, got {size}")
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(self.geometry(image))

    def geometry(self, image: Image.Image) -> np.ndarray:
        """The resized greyscale pixels, uint8 `[1, size, size]`."""
        grey = image.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return F.pil_to_tensor(grey).numpy()

    def finish(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pixels).float() / 255.0

    def geometry_key(self) -> dict[str, Any]:
        return {"kind": "cbmir.GreyPixels", "size": self.size, "interpolation": "bilinear"}


class RawPixelsOptions(BaseModel):
    """`size`: the side of the greyscale thumbnail that is flattened."""

    model_config = ConfigDict(extra="forbid")

    size: PositiveInt = 32


@register_family
class RawPixelsFamily(LoaderFamily):
    """The greyscale image resized to N x N and flattened (`raw-pixels:N`)."""

    name = "raw_pixels"
    spec_forms = ("raw-pixels:N",)
    offline = True
    Options = RawPixelsOptions

    def with_argument(self, preset: Preset, arg: str, spec: str) -> Preset:
        if not arg.isdigit() or int(arg) < 1:
            raise PresetError(f"model spec {spec!r}: {preset.name}:N needs a positive integer N")
        size = int(arg)
        return preset.model_copy(
            update={
                "name": spec,
                "options": {**preset.options, "size": size},
                "embedding": f"greyscale image resized to {size}x{size} (bilinear), flattened",
                "dim": size * size,
                "input_size": size,
            }
        )

    def locate(self, preset: Preset) -> WeightsLocation:
        return WeightsLocation(True, "no weights needed")

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        if checkpoint is not None:
            raise PresetError(f"model {preset.name!r}: raw pixels take no checkpoint")
        size = self.options(preset)["size"]
        pre = {"kind": "grey", "resize": size, "interpolation": "bilinear", "scale": "unit"}
        return Loaded(nn.Flatten(1), GreyPixels(size), pre, [], "no weights", size * size)
