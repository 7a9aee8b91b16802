"""An on-disk cache of decoded and resized images, shared by every model that resizes alike.

A transform that splits into `geometry(image) -> uint8 [C, H, W]` (decode, resize, crop) and `finish(pixels)
-> tensor` (scale, normalise, pad), with a `geometry_key()` naming what the first part depends on
(`cbmir.models.transforms.Preprocess`, `GreyFirst`, the raw-pixels baseline), has its resized pixels stored
under that key. The next model with the same key, in this process or another (the report runs a kernel per
model), reads them back instead of decoding and resizing the file again, and gets exactly the tensors a
decode gives (`finish(geometry(image))` is the transform).

The key also holds the versions of cbmir, Pillow, torchvision, pydicom and numpy, so an upgrade starts a new
key folder (remove the old ones by hand; a change to the decoding code within one cbmir version is not seen).
Layout: `<folder>/<key hash>/key.json` and `<folder>/<key hash>/<ab>/<entry hash>.npy`, where the entry hash
covers the resolved path, the frame, and the file's size and modification time: a changed file is decoded
afresh (its old entry stays until the folder is removed). An entry that cannot be read back is decoded again
and rewritten. Entries are written to a temporary file and renamed, so concurrent or killed runs leave only
whole entries. The cache holds `C x H x W` bytes per image and key (50 KB for a 224-pixel greyscale image); a
model whose setting no other model shares writes entries too, so set the cache for the runs that share.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def geometry_key(transform: Any) -> dict[str, Any] | None:
    """The transform's `geometry_key()`, or None when it cannot be split (no cache for it)."""
    if not all(hasattr(transform, name) for name in ("geometry", "finish", "geometry_key")):
        return None
    return transform.geometry_key()


def decoder_versions() -> dict[str, str]:
    """The versions of what decodes and resizes (cbmir, Pillow, torchvision, pydicom, numpy): part of the key, so
    an upgrade starts a new folder instead of reading pixels the old code made."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("cbmir", "pillow", "torchvision", "pydicom", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


class DecodeCache:
    """The cache folder for one transform (picklable, for DataLoader workers)."""

    def __init__(self, folder: str | os.PathLike, transform: Any) -> None:
        geometry = geometry_key(transform)
        if geometry is None:
            raise ValueError(
                f"transform {type(transform).__name__} has no geometry()/finish()/geometry_key(): it cannot be cached"
            )
        self.key = {"geometry": geometry, "decoders": decoder_versions()}
        text = json.dumps(self.key, sort_keys=True)
        self.folder = Path(folder) / hashlib.sha256(text.encode()).hexdigest()[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "key.json"
        if not key_file.exists():
            _write_atomic(key_file, lambda handle: handle.write(text.encode()))

    def entry(self, path: Path, frame: int | None) -> Path:
        """Where the pixels of `path` (this frame, as it is now on disk) are kept."""
        st = path.stat()
        name = hashlib.sha256(f"{path}\t{frame}\t{st.st_size}\t{st.st_mtime_ns}".encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.npy"

    def read(self, entry: Path) -> np.ndarray | None:
        """The stored uint8 `[C, H, W]` pixels, or None when absent or unreadable."""
        try:
            pixels = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
            return None
        return pixels

    def write(self, entry: Path, pixels: np.ndarray) -> None:
        entry.parent.mkdir(exist_ok=True)
        _write_atomic(entry, lambda handle: np.save(handle, np.ascontiguousarray(pixels), allow_pickle=False))

    def describe(self) -> dict[str, Any]:
        """For provenance: the folder and the key."""
        return {"folder": str(self.folder), "key": self.key}


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
