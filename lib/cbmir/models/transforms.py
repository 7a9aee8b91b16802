"""Preprocessing: the typed `preprocess` settings of a preset, and the transform they define."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
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
    A greyscale ("L") image is resized and cropped as one channel, then repeated to three: the same tensor as
    for its RGB conversion (every step treats channels alike), with a third of the resizing.
    """

    accepts_grey = True  # `ManifestImages` may hand it "L" images (cbmir.images.load_image(grey=True))

    def __init__(self, cfg: Preprocessing | dict[str, Any]):
        self.cfg = cfg if isinstance(cfg, Preprocessing) else Preprocessing.model_validate(cfg)
        self.interp = _INTERP[self.cfg.interpolation]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(self.geometry(image))

    def geometry(self, image: Image.Image) -> np.ndarray:
        """The resized and cropped pixels: uint8 `[C, H, W]`, one channel for an "L" image, else three."""
        cfg = self.cfg
        if image.mode != "L":
            image = image.convert("RGB")
        w, h = image.size
        if cfg.resize_mode == "exact":
            size = [cfg.resize, cfg.resize]
        elif cfg.resize_mode == "shortest":
            size = [cfg.resize]
        else:
            s = cfg.resize / max(w, h)
            size = [max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))]  # a sliver keeps one pixel
        if cfg.antialias is False:
            x = F.resize(F.pil_to_tensor(image), size, interpolation=self.interp, antialias=False)
        else:
            x = F.pil_to_tensor(F.resize(image, size, interpolation=self.interp, antialias=True))
        if cfg.crop:
            x = center_crop_floor(x, cfg.crop)
        return x.numpy()

    def finish(self, pixels: np.ndarray) -> torch.Tensor:
        """`geometry`'s uint8 pixels -> the model's float `[3, H, W]` input: scale, normalise, pad."""
        cfg = self.cfg
        x = torch.from_numpy(pixels).expand(3, -1, -1).float()  # one greyscale channel -> three equal ones
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

    def geometry_key(self) -> dict[str, Any]:
        """What `geometry` depends on: transforms with equal keys resize and crop alike (`cbmir.decode_cache`)."""
        keys = {"resize", "resize_mode", "interpolation", "crop", "antialias"}
        return {"kind": "cbmir.Preprocess", **self.cfg.model_dump(include=keys)}

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


class GreyFirst:
    """A torchvision `Compose` that resizes and crops a greyscale ("L") image as one channel before the rest.

    The leading `Resize` / `CenterCrop` steps (which treat channels alike) run on the "L" image, which is then
    converted to RGB for the remaining steps: the same tensor as the whole `Compose` gives for the image's RGB
    conversion, with a third of the resizing. Other images go through the `Compose` as they are.
    """

    accepts_grey = True

    def __init__(self, compose: Any) -> None:
        from torchvision.transforms import CenterCrop, Compose, Resize

        steps = list(compose.transforms)
        n = 0
        while n < len(steps) and type(steps[n]) in (Resize, CenterCrop):
            n += 1
        self.compose = compose
        self.head, self.tail = Compose(steps[:n]), Compose(steps[n:])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "L":
            return self.compose(image)
        return self.tail(self.head(image).convert("RGB"))

    def geometry(self, image: Image.Image) -> np.ndarray:
        """The leading resize / crop steps' pixels: uint8 `[C, H, W]` (one channel for an "L" image)."""
        pixels = np.asarray(self.head(image))
        return np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))

    def finish(self, pixels: np.ndarray) -> torch.Tensor:
        """`geometry`'s pixels through the remaining steps (as RGB)."""
        image = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
        return self.tail(image.convert("RGB"))

    def geometry_key(self) -> dict[str, Any] | None:
        """The leading steps as torchvision prints them (with their sizes and interpolation); None without any."""
        return {"kind": "torchvision", "steps": repr(self.head)} if self.head.transforms else None

    def __repr__(self) -> str:
        return f"GreyFirst({self.compose!r})"


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
