"""NIH ChestX-ray14: `Data_Entry_2017.csv`, the official train_val/test lists, PNGs in `images*/` folders.

train_val is split 90/10 into train/val by patient; `test_list.txt` is the test set. Findings are the
`|`-separated `Finding Labels`; `Effusion` and `Pleural_Thickening` are renamed to the CheXpert names.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cbmir.datasets.common import (
    DatasetError,
    Raw,
    dataset_prefix,
    patient_split,
    read_csv,
    read_list,
    require_file,
)

DATASET = "nih14"
ENTRY_FILES = ["Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"]
FINDINGS = [
    "No Finding",
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
]
RENAME = {"Effusion": "Pleural Effusion", "Pleural_Thickening": "Pleural Thickening"}
LABELS = {f: "XR/chest/" + RENAME.get(f, f) for f in FINDINGS}


def locate_images(raw_root: Path) -> dict[str, str]:
    """Map PNG file name -> path relative to `raw_root`, searching the `images*/` folders (sorted walk)."""
    found: dict[str, str] = {}
    tops = sorted(p for p in raw_root.iterdir() if p.is_dir() and p.name.startswith("images"))
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.lower().endswith(".png"):
                    continue
                rel = Path(dirpath, name).relative_to(raw_root).as_posix()
                if name in found:
                    raise DatasetError(f"image {name} found twice under {raw_root}: {found[name]} and {rel}")
                found[name] = rel
    return found


def parse_findings(text: object, source: Path, row: int) -> tuple[str, ...]:
    """`A|B` -> sorted label names; an unknown finding raises naming the row."""
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"{source}: row {row + 1}, column 'Finding Labels' is empty")
    names = []
    for part in text.split("|"):
        finding = part.strip()
        if finding not in LABELS:
            raise DatasetError(
                f"{source}: row {row + 1}, column 'Finding Labels': unknown finding {finding!r}"
            )
        names.append(LABELS[finding])
    return tuple(sorted(set(names)))


def build(raw_root: Path, seed: int = 0) -> Raw:
    """Read the official NIH files under `raw_root` into per-image records."""
    raw_root = Path(raw_root)
    entry_path = next((raw_root / n for n in ENTRY_FILES if (raw_root / n).is_file()), None)
    if entry_path is None:
        raise DatasetError(f"NIH ChestX-ray14 label file not found: expected {raw_root / ENTRY_FILES[0]}")
    trainval = set(read_list(require_file(raw_root / "train_val_list.txt", "NIH train_val list")))
    test = set(read_list(require_file(raw_root / "test_list.txt", "NIH test list")))
    both = sorted(trainval & test)
    if both:
        raise DatasetError(
            f"{raw_root}: {len(both)} image(s) in both train_val_list and test_list, e.g. {both[0]}"
        )

    entries = read_csv(entry_path, ["Image Index", "Finding Labels", "Patient ID"], dtype=str)
    dup = entries["Image Index"].duplicated()
    if dup.any():
        raise DatasetError(f"{entry_path}: duplicate 'Image Index' {entries['Image Index'][dup].iloc[0]!r}")
    listed = entries["Image Index"].isin(trainval | test)
    counts = {
        "entries_in_no_list": int((~listed).sum()),
        "listed_without_entry": len((trainval | test) - set(entries["Image Index"])),
    }
    entries = entries[listed].reset_index(drop=True)

    labels = [parse_findings(t, entry_path, i) for i, t in enumerate(entries["Finding Labels"])]
    patient = entries["Patient ID"].str.strip()
    if patient.isna().any() or (patient == "").any():
        raise DatasetError(f"{entry_path}: empty 'Patient ID'")
    patient = patient.map(lambda p: str(int(p)) if p.isdigit() else p)

    split = pd.Series("test", index=entries.index, dtype=object)
    is_tv = entries["Image Index"].isin(trainval)
    split[is_tv] = patient_split(patient[is_tv], seed=seed)

    located = locate_images(raw_root)
    rel = entries["Image Index"].map(lambda n: located.get(n, f"images/{n}"))
    counts["not_located"] = int((~entries["Image Index"].isin(located)).sum())
    prefix = dataset_prefix(raw_root)
    records = pd.DataFrame(
        {
            "filepath": prefix + "/" + rel,
            "dataset": DATASET,
            "split": split,
            "modality": "XR",
            "anatomic_region": "chest",
            "patient_id": patient,
            "key": entries["Image Index"],
            "labels": labels,
        }
    )
    return Raw(records, sorted(LABELS.values()), counts)
