"""RadMini source: the four lung-cancer CT patients of the Radiomics Digital Phantom shipped in PyPI `pycerr`.

Only the DICOM files are read (with pydicom); the package's code is never imported. Each patient folder holds
axial CT slices cropped around the tumour and one RTSTRUCT with the `GTV-1` outline, rasterised here per slice
(`lesions.polygon_mask`) and turned into slice findings by `lesions.slice_findings`. Data licence: CC BY-NC 3.0.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pydicom

from cbmir.datasets.radmini.lesions import polygon_mask, rtstruct_contours, slice_findings
from cbmir.datasets.radmini.render import CT, Item, SourceUnavailable
from cbmir.datasets.radmini.sources_pip import package_dir
from cbmir.images import dicom_to_array

PHANTOM = "datasets/radiomics_phantom_dicom"
ROI = "GTV-1"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def pycerr_items() -> Iterator[Item]:
    """Axial CT slices of pat_1..pat_4 labelled CT/lung/lesion or CT/lung/normal from the GTV outline."""
    root = package_dir("cerr") / PHANTOM
    patients = sorted(p for p in root.glob("pat_*") if p.is_dir())
    if not patients:
        raise SourceUnavailable(f"no radiomics phantom patients under {root}")
    for folder in patients:
        slices, rtstruct = [], None
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            if str(ds.get("Modality", "")) == "RTSTRUCT":
                rtstruct = ds
            elif str(ds.get("Modality", "")) == "CT":
                orient = tuple(round(float(v), 4) for v in ds.ImageOrientationPatient)
                if orient != IDENTITY:
                    raise ValueError(f"{path}: orientation {orient} is not axial identity")
                slices.append((float(ds.ImagePositionPatient[2]), path, ds))
        if rtstruct is None or not slices:
            raise SourceUnavailable(f"{folder}: needs CT slices and an RTSTRUCT")
        slices.sort(key=lambda s: s[0])
        z = np.array([s[0] for s in slices])
        thickness = float(np.median(np.diff(z))) if len(z) > 1 else 3.0
        areas = np.zeros(len(slices))
        masks = [np.zeros((int(ds.Rows), int(ds.Columns)), dtype=bool) for _, _, ds in slices]
        for contour in rtstruct_contours(rtstruct, ROI):
            k = int(np.argmin(np.abs(z - contour[0, 2])))
            if abs(z[k] - contour[0, 2]) > thickness / 2:
                raise ValueError(f"{folder}: a {ROI} contour at z={contour[0, 2]:.1f} matches no CT slice")
            ds = slices[k][2]
            masks[k] |= polygon_mask(
                contour[:, :2], ds.ImagePositionPatient[:2], ds.PixelSpacing, masks[k].shape
            )
        for k, (_, _, ds) in enumerate(slices):
            areas[k] = masks[k].sum() * float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1])
        for k, finding in enumerate(slice_findings(areas, z)):
            if finding is None:
                continue
            _, path, ds = slices[k]
            yield Item(
                relpath=f"pycerr/{folder.name}_z{k:03d}.png",
                pixels=dicom_to_array(ds),
                window=CT["lung"],
                modality="CT",
                region="lung",
                finding=finding,
                patient_id=f"pycerr:{folder.name}",
                source="pycerr",
                source_file=f"{PHANTOM}/{folder.name}/{path.name}",
                frame_or_slice=k,
                extra={"source_finding": f"{ROI} {areas[k]:.0f} mm2"},
            )
