"""MIMIC-CXR-JPG 2.0.0: the official split and CheXpert-labeler files, JPGs under `files/`.

`mimic-cxr-2.0.0-split.csv` (dicom_id, study_id, subject_id, split) gives the official splits
(`validate` -> `val`); `mimic-cxr-2.0.0-chexpert.csv` gives per-study labels (only 1 counts).
Images are `files/p<first two digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg`. Studies without a
label row are dropped, counted and reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cbmir.datasets.chexpert import DROPPED, FINDINGS, LABELS
from cbmir.datasets.common import (
    DatasetError,
    Raw,
    binary_labels,
    dataset_prefix,
    labels_from_flags,
)
from cbmir.datasets.common import read_csv as _read_csv

DATASET = "mimic"
VERSION_DIR = Path("files", "mimic-cxr-jpg", "2.0.0")
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
LABEL_FILE = "mimic-cxr-2.0.0-chexpert.csv"
SPLITS = {"train": "train", "validate": "val", "test": "test"}
# MIMIC-CXR-JPG's labels come from the CheXpert labeler: the same 13 findings (+ Support Devices, dropped).


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def find_version_dir(raw_root: Path) -> tuple[Path, Path, Path]:
    """(folder, split file, label file): `raw_root` itself or `raw_root/files/mimic-cxr-jpg/2.0.0`."""
    for folder in (raw_root, raw_root / VERSION_DIR):
        split, labels = _find(folder, SPLIT_FILE), _find(folder, LABEL_FILE)
        if split is not None and labels is not None:
            return folder, split, labels
    raise DatasetError(
        f"MIMIC-CXR-JPG files not found: expected {raw_root / VERSION_DIR / SPLIT_FILE} (or .csv.gz) "
        f"and {LABEL_FILE} beside it"
    )


def _ids(df: pd.DataFrame, columns: list[str], source: Path) -> None:
    for col in columns:
        bad = ~df[col].astype(str).str.fullmatch(r"\d+")
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DatasetError(f"{source}: row {row + 1}, column {col!r}: {df[col].iloc[row]!r} is not an id")


def build(raw_root: Path, seed: int = 0) -> Raw:
    """Join the split file with the study labels; `seed` is unused (MIMIC keeps its official split)."""
    raw_root = Path(raw_root)
    folder, split_path, label_path = find_version_dir(raw_root)
    split = _read_csv(split_path, ["dicom_id", "study_id", "subject_id", "split"], dtype=str)
    labels = _read_csv(
        label_path,
        ["subject_id", "study_id", *FINDINGS, *DROPPED],
        dtype={"subject_id": str, "study_id": str},
    )
    _ids(split, ["study_id", "subject_id"], split_path)
    _ids(labels, ["study_id", "subject_id"], label_path)
    unknown = ~split["split"].isin(list(SPLITS))
    if unknown.any():
        row = int(unknown.to_numpy().nonzero()[0][0])
        raise DatasetError(
            f"{split_path}: row {row + 1}, column 'split': unknown split {split['split'].iloc[row]!r}"
        )
    if split["dicom_id"].duplicated().any():
        raise DatasetError(
            f"{split_path}: duplicate dicom_id {split['dicom_id'][split['dicom_id'].duplicated()].iloc[0]!r}"
        )
    study_key = ["subject_id", "study_id"]
    if labels.duplicated(study_key).any():
        dup = labels[labels.duplicated(study_key)].iloc[0]
        raise DatasetError(
            f"{label_path}: study {dup['study_id']} of subject {dup['subject_id']} is listed twice"
        )

    flags = binary_labels(labels, FINDINGS, label_path)
    labels = pd.DataFrame({**{k: labels[k] for k in study_key}, "labels": labels_from_flags(flags, LABELS)})
    merged = split.merge(labels, on=study_key, how="left", validate="many_to_one")
    unlabeled = merged["labels"].isna()
    counts = {
        "studies_without_labels": int(merged.loc[unlabeled, study_key].drop_duplicates().shape[0]),
        "images_without_labels": int(unlabeled.sum()),
    }
    merged = merged[~unlabeled].reset_index(drop=True)

    rel = Path(os.path.relpath(folder, raw_root)).as_posix()
    base = dataset_prefix(raw_root) + ("" if rel == "." else "/" + rel)
    sub = merged["subject_id"]
    records = pd.DataFrame(
        {
            "filepath": base
            + "/files/p"
            + sub.str[:2]
            + "/p"
            + sub
            + "/s"
            + merged["study_id"]
            + "/"
            + merged["dicom_id"]
            + ".jpg",
            "dataset": DATASET,
            "split": merged["split"].map(SPLITS),
            "modality": "XR",
            "anatomic_region": "chest",
            "patient_id": sub,
            "key": merged["dicom_id"],
            "labels": merged["labels"],
        }
    )
    return Raw(records, sorted(LABELS.values()), counts)
