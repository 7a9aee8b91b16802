"""Preprocessing: the typed `preprocess` settings of a preset, and the transform they define."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Preprocessing(BaseModel):
    """The `preprocess` settings of a preset: resize, centre-crop, pad, scale and normalise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resize: PositiveInt = 224
    resize_mode: Literal["exact", "shortest", "longest"] = "exact"
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    crop: PositiveInt | None = None
    pad_to: PositiveInt | None = None
    mean: list[float] | None = Field(default=None, min_length=3, max_length=3)
    std: list[float] | None = Field(default=None, min_length=3, max_length=3)
    scale: Literal["unit", "minmax"] = "unit"
    # False: resize the uint8 pixels without antialiasing (as TF's `tf.image.resize(antialias=False)`); None: PIL
    antialias: bool | None = None

    @model_validator(mode="after")
    def _mean_with_std(self) -> Preprocessing:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        return self

    @property
    def output_size(self) -> int | None:
        """Side of the square tensor it produces (None when the aspect ratio is kept)."""
        if self.pad_to:
            return self.pad_to
        if self.crop:
            return self.crop
        return self.resize if self.resize_mode == "exact" else None


class Preprocess:
    """PIL RGB image -> [C, H, W] tensor by `Preprocessing` settings (picklable, for DataLoader workers).

    Resize (exact / shortest side / longest side) with PIL, centre-crop as Hugging Face's processors do (offsets
    rounded down; zero padding where the image is smaller), scale (`unit`: /255; `minmax`: each image's min..max
    to 0..1), normalise, then `pad_to` pads bottom/right with zeros (as SAM's processor does).
    """

    def __init__(self, cfg: Preprocessing | dict[str, Any]):
        self.cfg = cfg if isinstance(cfg, Preprocessing) else Preprocessing.model_validate(cfg)
        self.interp = _INTERP[self.cfg.interpolation]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        cfg = self.cfg
        image = image.convert("RGB")
        w, h = image.size
        if cfg.resize_mode == "exact":
            size = [cfg.resize, cfg.resize]
        elif cfg.resize_mode == "shortest":
            size = [cfg.resize]
        else:
            s = cfg.resize / max(w, h)
            size = [int(h * s + 0.5), int(w * s + 0.5)]
        if cfg.antialias is False:
            x = F.resize(F.pil_to_tensor(image), size, interpolation=self.interp, antialias=False)
        else:
            x = F.pil_to_tensor(F.resize(image, size, interpolation=self.interp, antialias=True))
        if cfg.crop:
            x = center_crop_floor(x, cfg.crop)
        x = x.float()
        if cfg.scale == "minmax":
            lo, hi = x.min(), x.max()
            x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
        else:
            x = x / 255.0
        if cfg.mean is not None:
            x = F.normalize(x, cfg.mean, cfg.std)
        if cfg.pad_to:
            p = cfg.pad_to
            x = torch.nn.functional.pad(x, (0, p - x.shape[2], 0, p - x.shape[1]))
        return x

    def describe(self) -> dict[str, Any]:
        """The settings, for provenance."""
        return {"kind": "cbmir.Preprocess", **self.cfg.model_dump(exclude_none=True)}


def center_crop_floor(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop a [C, H, W] tensor to `size` x `size` as Hugging Face's image processors do.

    The top/left offset is (H - size) // 2, rounded down (torchvision's `center_crop` rounds half to even, one
    pixel off for some sizes). A side shorter than `size` is first zero-padded, ceil of half the missing
    pixels before it, the rest after.
    """
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    if h < size or w < size:
        new_h, new_w = max(h, size), max(w, size)
        pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
        padded = x.new_zeros((*x.shape[:-2], new_h, new_w))
        padded[..., pad_top : pad_top + h, pad_left : pad_left + w] = x
        x, top, left = padded, top + pad_top, left + pad_left
        bottom, right = min(new_h, top + size), min(new_w, left + size)
        return x[..., max(0, top) : bottom, max(0, left) : right]
    return x[..., top : top + size, left : left + size]


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
