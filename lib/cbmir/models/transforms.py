"""Preprocessing from a small dict (the `preprocess` field of a preset): PIL RGB -> tensor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Preprocess:
    """Resize (exact / shortest side / longest side), centre-crop, pad, scale and normalise.

    `scale="unit"` divides by 255; `scale="minmax"` maps each image's min..max to 0..1.
    `pad_to` pads bottom/right with zeros after normalisation (as SAM's processor does).
    """

    def __init__(self, cfg: dict[str, Any]):
        unknown = set(cfg) - {
            "resize",
            "resize_mode",
            "interpolation",
            "crop",
            "pad_to",
            "mean",
            "std",
            "scale",
        }
        if unknown:
            raise ValueError(f"preprocess: unknown keys {sorted(unknown)}")
        self.cfg = dict(cfg)
        self.size = int(cfg.get("resize", 224))
        self.mode = cfg.get("resize_mode", "exact")
        if self.mode not in {"exact", "shortest", "longest"}:
            raise ValueError(f"preprocess.resize_mode must be exact/shortest/longest, got {self.mode!r}")
        self.interp = _INTERP[cfg.get("interpolation", "bilinear")]
        self.crop = cfg.get("crop")
        self.pad_to = cfg.get("pad_to")
        self.mean = cfg.get("mean")
        self.std = cfg.get("std")
        self.scale = cfg.get("scale", "unit")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        if self.mode == "exact":
            size = [self.size, self.size]
        elif self.mode == "shortest":
            size = [self.size]
        else:
            s = self.size / max(w, h)
            size = [int(h * s + 0.5), int(w * s + 0.5)]
        image = F.resize(image, size, interpolation=self.interp, antialias=True)
        if self.crop:
            image = F.center_crop(image, [int(self.crop), int(self.crop)])
        x = F.pil_to_tensor(image).float()
        if self.scale == "minmax":
            lo, hi = x.min(), x.max()
            x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
        else:
            x = x / 255.0
        if self.mean is not None:
            x = F.normalize(x, self.mean, self.std)
        if self.pad_to:
            p = int(self.pad_to)
            x = torch.nn.functional.pad(x, (0, p - x.shape[2], 0, p - x.shape[1]))
        return x

    def describe(self) -> dict[str, Any]:
        """The settings, for provenance."""
        return {"kind": "cbmir.Preprocess", **self.cfg}


def hf_processor_transform(processor: Any) -> Callable[[Image.Image], torch.Tensor]:
    """Wrap a Hugging Face image processor as PIL -> [C, H, W] tensor."""

    def transform(image: Image.Image) -> torch.Tensor:
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    return transform


def describe_hf_processor(processor: Any) -> dict[str, Any]:
    """The preprocessing fields of a Hugging Face image processor, for provenance."""
    keep = (
        "size",
        "crop_size",
        "do_resize",
        "do_center_crop",
        "resample",
        "image_mean",
        "image_std",
        "do_pad",
        "pad_size",
    )
    d = processor.to_dict()
    return {"kind": type(processor).__name__, **{k: d[k] for k in keep if k in d}}
