"""RadMini source: brain MR images from the test data of Debian's python3-dipy.

python3-nibabel's DICOM test files were looked at and left out: `0.dcm`/`1.dcm` render as a stripe pattern
and the rest are phantoms, maps or MIPs; python3-nipy's only anatomical image is 33x41 voxels.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cbmir.datasets.radmini.fetch import debian_test_data
from cbmir.datasets.radmini.render import ROBUST, Item
from cbmir.datasets.radmini.volumes import read_nifti

S0_SLICES = (3, 6)  # of the 10 slices of dipy's S0_10slices (b0 DWI)


def debtest_items(cache: Path, skipped: list[str]) -> Iterator[Item]:
    """MR/brain/normal images: dipy's T1 coronal slice and two slices of its b0 volume (two cases)."""
    root = debian_test_data(cache)
    rel = "dipy/data/files/t1_coronal_slice.npy"
    plane = np.load(io.BytesIO((root / rel).read_bytes()), allow_pickle=False)
    yield Item(
        relpath="debtest/dipy_t1_coronal_slice.png",
        pixels=np.ascontiguousarray(np.asarray(plane, dtype=np.float64).T[::-1]),
        window=ROBUST,
        modality="MR",
        region="brain",
        finding="normal",
        patient_id="debtest:dipy_t1",
        source="debtest",
        source_file=rel,
    )
    rel = "dipy/data/files/S0_10slices.nii.gz"
    vol = read_nifti(root / rel)
    for k in S0_SLICES:
        yield Item(
            relpath=f"debtest/dipy_s0_z{k:02d}.png",
            pixels=np.ascontiguousarray(vol.data[:, :, k].astype(np.float64).T[::-1]),
            window=ROBUST,
            modality="MR",
            region="brain",
            finding="normal",
            patient_id="debtest:dipy_s0",
            source="debtest",
            source_file=rel,
            frame_or_slice=k,
        )
