"""Open radiology images (PNG, JPEG, TIFF, DICOM) as 8-bit RGB PIL images (or, on request, greyscale ones).

`load_image` is what extraction uses. With `grey=True` a greyscale source stays one 8-bit channel ("L"): the
same pixels as the RGB image's three equal channels, a third of the work for a resize that follows. The DICOM helpers are public so that dataset builders can reuse the
same display pipeline: stored values -> modality LUT (rescale slope/intercept) -> VOI LUT or window
(else a robust min-max) -> 8 bits -> MONOCHROME1 inverted -> RGB.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cbmir.errors import CbmirError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
ROBUST_PERCENTILES = (0.5, 99.5)


class ImageLoadError(CbmirError, OSError):
    """An image that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")


def to_uint8(
    array: np.ndarray,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = ROBUST_PERCENTILES,
) -> np.ndarray:
    """Map any numeric array to uint8.

    With `window=(center, width)` values are mapped linearly from `[center - width/2, center + width/2]`
    to 0..255 and clipped. Without a window the range is the robust min-max: the given percentiles of the
    finite values (falling back to the plain min-max when they coincide). A constant image becomes zeros.
    """
    arr = np.asarray(array, dtype=np.float64)
    if window is not None:
        center, width = float(window[0]), float(window[1])
        if not width > 0:
            raise ValueError(f"window width must be positive, got {width}")
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return np.zeros(arr.shape, dtype=np.uint8)
        lo, hi = (float(v) for v in np.percentile(finite, percentiles))
        if hi <= lo:
            lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(arr, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_dicom(path: str | os.PathLike) -> Dataset:
    """Read a DICOM file (also without the 128-byte preamble); raise `ImageLoadError` if that fails."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=True)
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as err:
        raise ImageLoadError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageLoadError(path, "DICOM file has no pixel data")
    return ds


def n_frames(ds: Dataset) -> int:
    """Number of frames in a DICOM dataset (1 when the attribute is absent)."""
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _frame_view(ds: Dataset, frame: int) -> Dataset:
    """A shallow copy of `ds` with this frame's rescale and window lifted from functional groups, if any."""
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        return ds
    view = ds.copy()
    groups = []
    if "PerFrameFunctionalGroupsSequence" in ds and frame < len(ds.PerFrameFunctionalGroupsSequence):
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    lifted = {
        "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
        "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    }
    for seq_name, keywords in lifted.items():
        for group in groups:  # per-frame values take precedence over shared ones
            if seq_name in group and len(group[seq_name].value):
                item = group[seq_name].value[0]
                for kw in keywords:
                    if kw in item and kw not in view:
                        setattr(view, kw, item[kw].value)
                break
    return view


def _windowing_range(ds: Dataset) -> tuple[float, float]:
    """Output range of pydicom's windowing for this dataset (PS3.3 C.11.2.1.2, as pydicom implements it)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _lut_range(item: Dataset) -> tuple[float, float]:
    """Output range of a VOI LUT: its actual entries when readable, else the descriptor's bit depth."""
    data = item.get("LUTData")
    if isinstance(data, (list, tuple)) and len(data):
        return float(min(data)), float(max(data))
    bits = int(item.LUTDescriptor[2])
    return 0.0, float(2 ** (bits if 8 <= bits <= 16 else 16) - 1)


def _has_window(ds: Dataset) -> bool:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return False
    width = ds["WindowWidth"]
    value = width.value[0] if width.VM > 1 else width.value
    try:
        return value is not None and float(value) > 0
    except (TypeError, ValueError):
        return False


def dicom_to_array(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Pixel values of one frame of a DICOM dataset, before any display windowing.

    Greyscale: float64 `[H, W]` in modality units (rescale slope/intercept or modality LUT applied, e.g.
    Hounsfield units for CT). Colour: `[H, W, 3]` RGB in the stored bit depth (YBR converted; palette colour
    expanded through its LUT). `frame` defaults to the middle frame of a multi-frame image.
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

    count = n_frames(ds)
    index = count // 2 if frame is None else int(frame)
    if not 0 <= index < count:
        raise IndexError(f"frame {index} out of range: the image has {count} frame(s)")
    arr = pixel_array(ds, index=index if count > 1 else None)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        return apply_color_lut(arr, ds)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return arr[..., :3]
    if arr.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {arr.shape} for {photometric}")
    return apply_modality_lut(arr, _frame_view(ds, index)).astype(np.float64, copy=False)


def dicom_to_uint8(
    ds: Dataset, frame: int | None = None, window: tuple[float, float] | None = None
) -> np.ndarray:
    """One frame as display-ready uint8: `[H, W]` greyscale or `[H, W, 3]` RGB.

    Greyscale windowing: an explicit `window=(center, width)` wins; else the file's VOI LUT sequence or
    window centre/width (the first one; pydicom's `apply_voi_lut`); else the robust min-max of `to_uint8`.
    MONOCHROME1 is inverted so that higher values are brighter. Colour images are scaled from their bit depth.
    """
    from pydicom.pixels import apply_voi_lut

    count = n_frames(ds)
    index = count // 2 if frame is None else int(frame)
    arr = dicom_to_array(ds, index)
    if arr.ndim == 3:  # colour: scale the stored bit depth to 8 bits
        if arr.dtype == np.uint8:
            return arr
        bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize))
        if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
            bits = 8 * arr.dtype.itemsize
        return to_uint8(arr, window=((2**bits - 1) / 2.0, float(2**bits - 1)))
    view = _frame_view(ds, index)
    if window is not None:
        out = to_uint8(arr, window=window)
    elif view.get("VOILUTSequence"):
        mapped = apply_voi_lut(arr, view, index=0, prefer_lut=True)
        lo, hi = _lut_range(view.VOILUTSequence[0])
        out = to_uint8(mapped, window=((lo + hi) / 2.0, hi - lo)) if hi > lo else to_uint8(mapped)
    elif _has_window(view):
        mapped = apply_voi_lut(arr, view, index=0, prefer_lut=False)
        lo, hi = _windowing_range(view)
        out = to_uint8(mapped, window=((lo + hi) / 2.0, hi - lo))
    else:
        out = to_uint8(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _as_rgb(array: np.ndarray, grey: bool = False) -> Image.Image:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim == 2:
        if grey:
            return Image.fromarray(array, mode="L")
        array = np.repeat(array[..., None], 3, axis=2)
    return Image.fromarray(array, mode="RGB")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        head = handle.read(132)
    return head[128:132] == b"DICM"


def _load_pil(path: Path, frame: int | None, grey: bool = False) -> Image.Image:
    with Image.open(path) as img:
        count = int(getattr(img, "n_frames", 1))
        if frame is not None or count > 1:
            index = count // 2 if frame is None else int(frame)
            if not 0 <= index < count:
                raise IndexError(f"frame {index} out of range: the image has {count} frame(s)")
            img.seek(index)
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit / 32-bit greyscale
            return _as_rgb(to_uint8(np.asarray(img)), grey)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, img).convert("RGB")
        if grey and img.mode == "L":
            return img  # its pixels are loaded: usable after the file closes
        return img.convert("RGB")


def load_image(path: str | os.PathLike, frame: int | None = None, grey: bool = False) -> Image.Image:
    """Open an image file as an 8-bit RGB PIL image (with `grey=True`: "L" where the source is greyscale).

    DICOM (by suffix or the `DICM` marker) goes through `dicom_to_uint8`; other formats through PIL, with
    16-bit greyscale PNG/TIFF scaled by the robust min-max. `frame` picks one frame of a multi-frame file
    (default: the middle one). Any failure raises `ImageLoadError` naming the file and the reason.
    With `grey`, 8-bit and 16-bit greyscale files and greyscale DICOM come back as mode "L", whose
    `convert("RGB")` is exactly the image returned without it; colour and alpha images are RGB either way.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageLoadError(path, "file not found" if not path.exists() else "not a regular file")
        if _is_dicom(path):
            return _as_rgb(dicom_to_uint8(read_dicom(path), frame), grey)
        return _load_pil(path, frame, grey)
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageLoadError(path, "unrecognised or corrupt image format") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(path, str(err)) from err
    except MemoryError as err:
        raise ImageLoadError(path, "image too large to decode in memory") from err
    except Exception as err:  # noqa: BLE001 -- any decoder failure is a property of this file
        raise ImageLoadError(path, f"{type(err).__name__}: {err}") from err
