"""CheXpert v1.0: `CheXpert-v1.0/train.csv` (split 90/10 by patient) and `valid.csv` (the test set).

Only value 1 is positive (blank, 0 and uncertain -1 are negative); `Support Devices` is dropped;
frontal and lateral views are both kept; `No Finding` is a label like the others.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pandas as pd

from cbmir.datasets.common import (
    DatasetError,
    Raw,
    binary_labels,
    dataset_prefix,
    labels_from_flags,
    patient_split,
    read_csv,
)

DATASET = "CheXpert"
FOLDERS = ["CheXpert-v1.0", "CheXpert-v1.0-small"]
FINDINGS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
]
DROPPED = ["Support Devices"]
LABELS = {f: "XR/chest/" + f for f in FINDINGS}
_PATIENT = re.compile(r"^patient\d+$")


def find_folder(raw_root: Path) -> Path:
    """The `CheXpert-v1.0` (or `-small`) folder under `raw_root` that holds train.csv and valid.csv."""
    for name in FOLDERS:
        folder = raw_root / name
        if (folder / "train.csv").is_file() and (folder / "valid.csv").is_file():
            return folder
    raise DatasetError(
        f"CheXpert label files not found: expected {raw_root / FOLDERS[0] / 'train.csv'} and valid.csv"
    )


def _patients(paths: pd.Series, source: Path) -> pd.Series:
    """`CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg` -> `patient00001`."""
    out = []
    for i, p in enumerate(paths):
        parts = PurePosixPath(str(p)).parts
        if len(parts) < 4 or not _PATIENT.match(parts[2]) or ".." in parts or str(p).startswith("/"):
            raise DatasetError(
                f"{source}: row {i + 1}, column 'Path': {p!r} is not "
                "'CheXpert-v1.0/<split>/patientNNNNN/studyN/<view>.jpg'"
            )
        out.append(parts[2])
    return pd.Series(out, index=paths.index, dtype=object)


def _read(path: Path) -> pd.DataFrame:
    df = read_csv(path, ["Path", *FINDINGS, *DROPPED], dtype={"Path": str})
    dup = df["Path"].duplicated()
    if dup.any():
        raise DatasetError(f"{path}: duplicate 'Path' {df['Path'][dup].iloc[0]!r}")
    return df


def build(raw_root: Path, seed: int = 0, drop_uncertain: bool = False) -> Raw:
    """Read train.csv and valid.csv under `raw_root` into per-image records.

    `drop_uncertain=True` leaves out every image with an uncertain (-1) finding, which is what the
    authors' script did to train.csv (it summed the raw values, -1 included, before zeroing them); use it
    to reproduce their CheXpert table. The split is drawn before, so it does not change.
    """
    raw_root = Path(raw_root)
    folder = find_folder(raw_root)
    frames = []
    counts = {"uncertain_dropped": 0} if drop_uncertain else {}
    for name, official in [("train.csv", "train"), ("valid.csv", "test")]:
        path = folder / name
        df = _read(path)
        patient = _patients(df["Path"], path)
        split = patient_split(patient, seed=seed) if official == "train" else "test"
        flags = binary_labels(df, FINDINGS, path)
        keep = pd.Series(True, index=df.index)
        if drop_uncertain:
            keep = ~df[FINDINGS].apply(pd.to_numeric, errors="coerce").eq(-1.0).any(axis=1)
            counts["uncertain_dropped"] += int((~keep).sum())
        frame = pd.DataFrame(
            {
                "filepath": dataset_prefix(raw_root) + "/" + df["Path"].astype(str),
                "dataset": DATASET,
                "split": split,
                "modality": "XR",
                "anatomic_region": "chest",
                "patient_id": patient,
                "key": df["Path"].astype(str),
                "labels": labels_from_flags(flags, LABELS),
            }
        )
        frames.append(frame[keep.to_numpy()])
    train_pat = set(frames[0]["patient_id"])
    shared = sorted(train_pat & set(frames[1]["patient_id"]))
    if shared:
        raise DatasetError(f"{folder}: patient {shared[0]} appears in both train.csv and valid.csv")
    records = pd.concat(frames, ignore_index=True)
    return Raw(records, sorted(LABELS.values()), counts)
