"""RadImageNet: `RadiologyAI_{train,val,test}.csv` with a `filename` column, official splits.

A filename is `<top>/<modality>/<region>/<pathology>/<file>` relative to the folder above the raw root
(e.g. `radiology_ai/CT/lung/nodule/x.png`). Ultrasound folders without a pathology level get `normal`
(`US/aorta/x.png` -> `US/aorta/normal`) and `US/thyroid_nodule` becomes `US/thyroid/nodule`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cbmir.datasets.common import DatasetError, Raw, dataset_prefix, read_csv, require_file

DATASET = "radiology_ai"
SPLIT_FILES = {"train": "RadiologyAI_train.csv", "val": "RadiologyAI_val.csv", "test": "RadiologyAI_test.csv"}
MODALITIES = ("CT", "MR", "US")
FOLDER_RENAME = {("US", "thyroid_nodule"): ("thyroid", "nodule")}
NO_PATHOLOGY = "normal"


def parse_filename(filename: str, source: Path, row: int) -> tuple[str, str, str, str]:
    """`filename` -> (path inside the raw root, modality, region, label)."""
    parts = filename.split("/")
    where = f"{source}: row {row + 1}, column 'filename' ({filename!r})"
    if "" in parts or "." in parts or ".." in parts or len(parts) not in (4, 5):
        raise DatasetError(f"{where}: expected <top>/<modality>/<region>[/<pathology>]/<file>")
    modality, region = parts[1], parts[2]
    if modality not in MODALITIES:
        raise DatasetError(f"{where}: unknown modality {modality!r} (expected one of {MODALITIES})")
    if (modality, region) in FOLDER_RENAME:
        if len(parts) != 4:
            raise DatasetError(f"{where}: {modality}/{region} should have no pathology level")
        region, pathology = FOLDER_RENAME[(modality, region)]
    elif len(parts) == 4:
        if modality != "US":
            raise DatasetError(f"{where}: {modality} images need a pathology folder")
        pathology = NO_PATHOLOGY
    else:
        pathology = parts[3]
    inner = "/".join(parts[1:])
    return inner, modality, region, f"{modality}/{region}/{pathology}"


def build(raw_root: Path, seed: int = 0) -> Raw:
    """Read the three official split CSVs; `seed` is unused (RadImageNet keeps its official split)."""
    raw_root = Path(raw_root)
    prefix = dataset_prefix(raw_root)
    rows = []
    for split, name in SPLIT_FILES.items():
        path = require_file(raw_root / name, f"RadImageNet {split} CSV")
        df = read_csv(path, ["filename"], dtype={"filename": str})
        for i, filename in enumerate(df["filename"]):
            if not isinstance(filename, str) or not filename.strip():
                raise DatasetError(f"{path}: row {i + 1}, column 'filename' is empty")
            inner, modality, region, label = parse_filename(filename.strip(), path, i)
            rows.append((prefix + "/" + inner, split, modality, region, filename.strip(), label))
    long = pd.DataFrame(rows, columns=["filepath", "split", "modality", "anatomic_region", "key", "label"])

    # One record per image: the label follows from the path, so repeated rows are plain duplicates.
    splits = long.groupby("filepath")["split"].nunique()
    if (splits > 1).any():
        raise DatasetError(
            f"{raw_root}: image {splits[splits > 1].index[0]} is listed in more than one split"
        )
    dup = long.duplicated("filepath")
    counts = {"duplicate_rows": int(dup.sum())}
    records = long[~dup].reset_index(drop=True)
    records["labels"] = [(label,) for label in records.pop("label")]
    records["dataset"] = DATASET
    records["patient_id"] = ""
    return Raw(records, sorted(set(long["label"])), counts)
