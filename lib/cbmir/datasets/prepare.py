"""Prepare the paper's four datasets into manifests, deterministically; combine and summarise them.

`prepare(name, raw_root, out_csv)` reads one official raw tree (see docs/datasets.md), keeps single-label
images, checks the image files, and writes a manifest in the paper's schema (`cbmir.manifest`) whose
filepaths are relative to the parent of `raw_root`. Splits depend only on the data and the seed, rows are
sorted, and the CSV is written with fixed formatting, so preparing twice gives byte-identical files.
Every dropped or missing image is counted in a report, returned in `df.attrs["report"]` and written beside
the CSV as `<name>.report.json` (`cbmir prepare` prints it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cbmir.datasets import chexpert, mimic, nih14, radimagenet
from cbmir.datasets.common import DatasetError, Raw

BUILDERS = {
    "radimagenet": radimagenet.build,
    "nih14": nih14.build,
    "chexpert": chexpert.build,
    "mimic": mimic.build,
}
ON_MISSING = ("drop", "keep")
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
METADATA = ["patient_id"]


def _write_csv(df: pd.DataFrame, out_csv: str | os.PathLike) -> None:
    """Fixed formatting: UTF-8, `\\n` line ends, no index, labels as 0/1 integers."""
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, lineterminator="\n", encoding="utf-8")


def report_path(out_csv: str | os.PathLike) -> Path:
    """Where the preparation report of `out_csv` is written: `<stem>.report.json` beside it."""
    out = Path(out_csv)
    return out.with_name(out.stem + ".report.json")


def _file_problem(path: Path) -> str | None:
    """None if `path` is a readable non-empty file, else why not."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if not path.is_file():
        return "not a file"
    if st.st_size == 0:
        return "empty file"
    if not os.access(path, os.R_OK):
        return "unreadable (no read permission)"
    return None


def _ordered(df: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Base columns, sorted label columns, metadata; rows by split (train, val, test) then filepath."""
    from cbmir.manifest import BASE_COLUMNS

    meta = [c for c in df.columns if c not in BASE_COLUMNS and c not in labels]
    df = df[list(BASE_COLUMNS) + sorted(labels) + sorted(meta)]
    rank = df["split"].map(SPLIT_ORDER)
    order = np.lexsort(
        (df["filepath"].to_numpy(dtype=str), df["dataset"].to_numpy(dtype=str), rank.to_numpy())
    )
    return df.iloc[order].reset_index(drop=True)


def prepare(
    name: str,
    raw_root: str | os.PathLike,
    out_csv: str | os.PathLike,
    seed: int = 0,
    check_files: bool = True,
    on_missing: str = "drop",
    ignore_list: str | os.PathLike | None = None,
    drop_uncertain: bool = False,
) -> pd.DataFrame:
    """Prepare dataset `name` from its official files under `raw_root` into the manifest `out_csv`.

    `on_missing` decides what happens to images whose file is missing or unreadable ("drop" or "keep");
    either way they are counted and listed in the report. `ignore_list` is a text file of filepaths or
    native ids (NIH `Image Index`, CheXpert `Path`, MIMIC `dicom_id`, RadImageNet `filename`) to leave out.
    `drop_uncertain` (CheXpert only) reproduces the authors' CheXpert table: images with any -1 are left out.
    The report is returned in `df.attrs["report"]`.
    """
    from cbmir.manifest import validate_manifest

    if name not in BUILDERS:
        raise ValueError(f"prepare: parameter 'name' is {name!r}; allowed {sorted(BUILDERS)}")
    if on_missing not in ON_MISSING:
        raise ValueError(f"prepare: parameter 'on_missing' is {on_missing!r}; allowed {list(ON_MISSING)}")
    raw_root = Path(raw_root)
    if not raw_root.is_dir():
        raise FileNotFoundError(f"prepare: RAW_ROOT {raw_root} is not a directory")
    if drop_uncertain and name != "chexpert":
        raise ValueError(f"prepare: parameter 'drop_uncertain' applies to chexpert only, not {name!r}")
    extra = {"drop_uncertain": True} if drop_uncertain else {}
    raw: Raw = BUILDERS[name](raw_root, seed=seed, **extra)
    rec = raw.records
    report: dict = {"dataset": name, "raw_root_name": raw_root.absolute().name, "seed": seed}
    counts: dict[str, int] = {"images_read": len(rec), **raw.counts}

    if ignore_list is not None:
        with open(ignore_list, encoding="utf-8") as fh:
            ignored = {line.strip() for line in fh if line.strip()}
        hit = rec["filepath"].isin(ignored) | rec["key"].isin(ignored)
        counts["ignored"] = int(hit.sum())
        rec = rec[~hit]

    n_labels = rec["labels"].map(len)
    counts["multi_label_dropped"] = int((n_labels > 1).sum())
    counts["no_label_dropped"] = int((n_labels == 0).sum())
    rec = rec[n_labels == 1].reset_index(drop=True)

    missing: list[dict[str, str]] = []
    if check_files:
        data_root = raw_root.absolute().parent
        problems = [_file_problem(data_root / fp) for fp in rec["filepath"]]
        bad = np.array([p is not None for p in problems], dtype=bool)
        missing = [
            {"filepath": fp, "problem": p}
            for fp, p in sorted(zip(rec["filepath"], problems, strict=True))
            if p is not None
        ]
        counts["missing_files"] = int(bad.sum())
        if on_missing == "drop":
            rec = rec[~bad].reset_index(drop=True)
    counts["images_written"] = len(rec)
    if rec.empty:
        raise DatasetError(
            f"prepare {name}: no single-label image left to write from {raw_root} (counts: {counts})"
        )

    label = rec["labels"].str[0]
    onehot = pd.DataFrame(
        {c: (label == c).to_numpy(dtype=np.int8) for c in sorted(set(raw.vocabulary) | set(label))},
        index=rec.index,
    )
    base = rec[["filepath", "dataset", "split", "modality", "anatomic_region"] + METADATA]
    df = _ordered(pd.concat([base, onehot], axis=1), list(onehot.columns))
    validate_manifest(df, source=str(out_csv))
    _write_csv(df, out_csv)

    report.update(
        check_files=check_files,
        drop_uncertain=drop_uncertain,
        on_missing=on_missing,
        counts=counts,
        images_per_split={s: int((df["split"] == s).sum()) for s in SPLIT_ORDER},
        missing=missing,
    )
    with open(report_path(out_csv), "w", encoding="utf-8", newline="\n") as fh:
        json.dump(report, fh, indent=1, sort_keys=True)
        fh.write("\n")
    df.attrs["report"] = report
    return df


def combine(csv_paths: Sequence[str | os.PathLike], out_csv: str | os.PathLike) -> pd.DataFrame:
    """Concatenate manifests (ours or the authors' published ones) into one, validated and sorted.

    Identical label names merge into one column (union of labels, absent = 0); label values are written
    as 0/1 integers, label columns sorted, rows sorted by split, dataset and filepath.
    """
    from cbmir.manifest import concat_manifests, label_columns, read_manifest, validate_manifest

    paths = [Path(p) for p in csv_paths]
    if not paths:
        raise ValueError("combine: parameter 'csv_paths' is empty")
    frames = [read_manifest(p) for p in paths]
    df = concat_manifests(frames, sources=[str(p) for p in paths])
    labels = label_columns(df)
    df[labels] = df[labels].astype(np.int8)
    df = _ordered(df, labels)
    validate_manifest(df, source=str(out_csv))
    _write_csv(df, out_csv)
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Images and cases (patients) per dataset, modality and label (rows): for each split `<split>` (images) and
    `<split> cases`, then `total` and `total cases` (`cbmir.analyses.data.count_table`)."""
    from cbmir.analyses.data import count_table

    table = count_table(df, ["dataset", "modality", "label"], columns="split")
    columns = ["dataset", "modality", "label"]
    for split in [*SPLIT_ORDER, "total"]:
        for kind, name in (("images", split), ("cases", f"{split} cases")):
            source = f"{split} {kind}"
            table[name] = table[source].astype("int64") if source in table else 0
            columns.append(name)
    return table[columns].sort_values(["dataset", "modality", "label"], ignore_index=True)
