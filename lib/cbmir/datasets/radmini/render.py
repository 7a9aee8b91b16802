"""RadMini items and how they become 8-bit PNG files (display windows, size cap, deterministic bytes)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cbmir.images import to_uint8

MAX_SIDE = 512  # long side of the stored images (never upscaled)
THUMB_SIDE = 96  # long side of the gallery thumbnails
PNG_COMPRESS_LEVEL = 6  # fixed, so that rebuilding gives byte-identical files

# CT windows (centre, width) in Hounsfield units, chosen per body part.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
}
PERCENTILES = (0.5, 99.5)


class SourceUnavailable(RuntimeError):
    """An optional source that cannot be used on this machine; the message says why."""


@dataclass(frozen=True)
class Window:
    """How stored values map to 8 bits: a CT window, robust percentiles, or as stored (already 8-bit)."""

    kind: str  # "ct" | "percentile" | "stored"
    name: str = ""  # the CT window's name (a key of CT_WINDOWS)

    def describe(self) -> str:
        if self.kind == "ct":
            centre, width = CT_WINDOWS[self.name]
            return f"CT {self.name} window C{centre:g}/W{width:g} HU"
        if self.kind == "percentile":
            return f"percentile {PERCENTILES[0]:g}-{PERCENTILES[1]:g} min-max"
        return "as stored (8-bit source)"


CT = {name: Window("ct", name) for name in CT_WINDOWS}
ROBUST = Window("percentile")
STORED = Window("stored")


@dataclass
class Item:
    """One 2D image of RadMini, before rendering: pixels plus everything its manifest row needs."""

    relpath: str  # under the data root, e.g. "pydicom/RG1_UNCR.png"
    pixels: np.ndarray  # [H, W] numeric, or [H, W, 3] RGB already uint8
    window: Window
    modality: str
    region: str
    finding: str
    patient_id: str
    source: str
    source_file: str
    frame_or_slice: int | str = ""
    invert: bool = False  # MONOCHROME1: higher values darker
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.modality}/{self.region}/{self.finding}"


def to_display(item: Item) -> np.ndarray:
    """Apply the item's window: uint8 `[H, W]` (greyscale) or `[H, W, 3]` (colour)."""
    px = np.asarray(item.pixels)
    if px.ndim == 3:
        if px.shape[-1] != 3 or px.dtype != np.uint8:
            raise ValueError(f"{item.source_file}: colour must be uint8 [H, W, 3], got {px.dtype} {px.shape}")
        return np.ascontiguousarray(px)
    if px.ndim != 2:
        raise ValueError(f"{item.source_file}: expected a 2D image, got shape {px.shape}")
    if item.window.kind == "ct":
        out = to_uint8(px, window=CT_WINDOWS[item.window.name])
    elif item.window.kind == "percentile":
        out = to_uint8(px, percentiles=PERCENTILES)
    else:
        out = np.asarray(px, dtype=np.uint8)
    return 255 - out if item.invert else out


def _fit(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    if max(w, h) <= side:
        return img
    scale = side / max(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def png_bytes(img: Image.Image) -> bytes:
    """PNG bytes with fixed compression and no metadata chunks (no timestamps)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def write_item(item: Item, root: Path) -> Image.Image:
    """Write the item's PNG under `root` and its thumbnail under `root/thumbs`; return the stored image."""
    arr = to_display(item)
    img = Image.fromarray(arr, mode="RGB" if arr.ndim == 3 else "L")
    img = _fit(img, MAX_SIDE)
    for path, im in ((root / item.relpath, img), (root / "thumbs" / item.relpath, _fit(img, THUMB_SIDE))):
        path.parent.mkdir(parents=True, exist_ok=True)
        data = png_bytes(im)
        if not (path.is_file() and path.read_bytes() == data):
            path.write_bytes(data)
    return img


def orient_slice(plane: np.ndarray, flip_rows: bool = False, flip_cols: bool = False) -> np.ndarray:
    """A volume plane indexed `[x, y]` as a display image `[row, col]` (transposed, optionally flipped)."""
    out = np.asarray(plane).T
    if flip_rows:
        out = out[::-1]
    if flip_cols:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
