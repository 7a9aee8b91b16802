"""Small readers for the volume formats RadMini slices: NIfTI-1 (.nii/.nii.gz) and InVesalius .inv3."""

from __future__ import annotations

import gzip
import plistlib
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}


@dataclass
class Volume:
    """A 3D array indexed `[x, y, z]` plus each axis's direction in LPS patient space (+1 or -1).

    +1 on x means the index grows towards the patient's left, on y towards posterior, on z towards superior.
    """

    data: np.ndarray
    axis_sign: tuple[int, int, int]
    spacing: tuple[float, float, float]


def read_nifti(path: Path) -> Volume:
    """Read a 3D NIfTI-1 file (header fields we need only; scl_slope/inter applied when set)."""
    raw = gzip.open(path, "rb").read() if path.name.endswith(".gz") else path.read_bytes()
    if len(raw) < 352:
        raise ValueError(f"{path}: too short to be a NIfTI-1 file")
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != 348:
        raise ValueError(f"{path}: not a NIfTI-1 file (sizeof_hdr != 348)")
    dim = struct.unpack(endian + "8h", raw[40:56])
    if dim[0] < 3 or any(d > 1 for d in dim[4 : dim[0] + 1]):
        raise ValueError(f"{path}: expected a 3D volume, got dim {dim[: dim[0] + 1]}")
    code = struct.unpack(endian + "h", raw[70:72])[0]
    if code not in _NIFTI_DTYPES:
        raise ValueError(f"{path}: unsupported NIfTI datatype {code}")
    pixdim = struct.unpack(endian + "8f", raw[76:108])
    offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    sform = struct.unpack(endian + "h", raw[254:256])[0]
    shape = dim[1:4]
    dtype = np.dtype(endian + _NIFTI_DTYPES[code])
    count = int(np.prod(shape))
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    if slope not in (0.0, 1.0) or inter != 0.0:
        data = data * (slope or 1.0) + inter
    if sform > 0:
        rows = np.array(struct.unpack(endian + "12f", raw[280:328])).reshape(3, 4)[:, :3]
        ras = [int(np.sign(rows[i, i]) or 1) for i in range(3)]
    else:  # qform-only or no transform: assume the usual RAS storage
        ras = [1, 1, 1]
    sign = (-ras[0], -ras[1], ras[2])  # RAS -> LPS
    return Volume(np.asarray(data), sign, tuple(float(abs(p)) for p in pixdim[1:4]))


def read_inv3(path: Path) -> tuple[np.ndarray, dict]:
    """The CT matrix `[z, y, x]` (int16) and main.plist of an InVesalius project (a tar.gz)."""
    with tarfile.open(path, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        if "main.plist" not in members:
            raise ValueError(f"{path}: no main.plist inside; not an InVesalius project")
        meta = plistlib.loads(tar.extractfile(members["main.plist"]).read())
        matrix = meta["matrix"]
        raw = tar.extractfile(members[matrix["filename"]]).read()
    shape = tuple(int(s) for s in matrix["shape"])
    return np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]), count=int(np.prod(shape))).reshape(shape), meta
