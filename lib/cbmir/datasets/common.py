"""Shared pieces of the dataset preparers: the raw-record contract, patient splits, CSV reading.

Every dataset module turns an official raw tree into a `Raw` table with one row per image:
`filepath, dataset, split, modality, anatomic_region, patient_id, key, labels`, where `labels` is a
sorted tuple of label names (`XR/chest/Edema`) and `key` is the dataset's own image id (matched by
ignore lists). `cbmir.datasets.prepare` does the rest (filtering, file checks, one-hot, writing).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cbmir.errors import CbmirError

RAW_COLUMNS = [
    "filepath",
    "dataset",
    "split",
    "modality",
    "anatomic_region",
    "patient_id",
    "key",
    "labels",
]
VAL_FRACTION = 0.1


class DatasetError(CbmirError, ValueError):
    """Raw input that does not match the official layout; the message names the file, row or column."""


@dataclass
class Raw:
    """What a dataset module hands to `prepare`: image records, label vocabulary, dataset-specific counts."""

    records: pd.DataFrame
    vocabulary: list[str]
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in RAW_COLUMNS if c not in self.records.columns]
        if missing:
            raise ValueError(f"dataset records lack columns {missing}")


def require_file(path: Path, what: str) -> Path:
    """Return `path` if it is a file, else raise naming it and what it should be."""
    if not path.is_file():
        raise DatasetError(f"{what} not found: expected {path}")
    return path


def read_csv(path: Path, required: list[str], **kwargs) -> pd.DataFrame:
    """Read an official CSV (plain or .gz) and check that the `required` columns are present."""
    try:
        df = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot parse CSV ({err})") from err
    absent = [c for c in required if c not in df.columns]
    if absent:
        raise DatasetError(f"{path}: missing column(s) {absent}; found {list(df.columns)}")
    return df


def read_list(path: Path) -> list[str]:
    """Lines of a text file, stripped, blank lines skipped."""
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def patient_split(patient_ids: pd.Series, seed: int = 0, val_fraction: float = VAL_FRACTION) -> pd.Series:
    """Assign `train`/`val` per row, by patient, independent of row order.

    Unique ids are sorted as strings, then a seeded permutation sends `n - floor(n * (1 - val_fraction))`
    patients to val (the rounding of scikit-learn's `train_test_split(train_size=0.9)`).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    ids = patient_ids.astype(str)
    unique = np.array(sorted(set(ids)), dtype=object)
    n_train = math.floor(len(unique) * (1 - val_fraction) + 1e-9)
    perm = np.random.default_rng(seed).permutation(len(unique))
    val_ids = set(unique[perm[n_train:]])
    return pd.Series(np.where(ids.isin(val_ids), "val", "train"), index=patient_ids.index)


def binary_labels(df: pd.DataFrame, columns: list[str], source: Path) -> pd.DataFrame:
    """CheXpert-style label columns as booleans: only 1 counts; blank, 0 and -1 (uncertain) are negative.

    Any other value raises, naming the file, row (1-based data row) and column.
    """
    out = {}
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna() & (df[col].astype(str).str.strip() != "")
        bad |= values.notna() & ~values.isin([1.0, 0.0, -1.0])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(
                f"{source}: row {row + 1}, column {col!r}: label value {str(df[col].iloc[row])!r} "
                "is not one of 1, 0, -1 or blank"
            )
        out[col] = values.eq(1.0).to_numpy()
    return pd.DataFrame(out, index=df.index)


def labels_from_flags(flags: pd.DataFrame, names: dict[str, str]) -> list[tuple[str, ...]]:
    """Per row, the sorted tuple of label names (`names[column]`) whose flag is set."""
    cols = list(flags.columns)
    arr = flags.to_numpy(dtype=bool)
    return [tuple(sorted(names[cols[j]] for j in np.flatnonzero(row))) for row in arr]


def dataset_prefix(raw_root: Path) -> str:
    """The first component of every `filepath`: the raw folder's own name (data root = its parent)."""
    name = Path(os.path.abspath(raw_root)).name
    if not name:
        raise DatasetError(f"RAW_ROOT {raw_root} has no folder name; point it at the dataset's folder")
    return name
