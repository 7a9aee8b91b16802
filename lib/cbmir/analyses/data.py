"""The data study: counting tables (images and cases by any columns) and a leakage audit.

A **case** is the independent unit, a patient: the manifest's optional `patient_id` column, read per dataset (two
datasets' patient "17" are two patients). Rows without a patient id (column absent, empty or missing) are each
their own case.

The leakage audit reports (1) patients whose images fall in more than one split and (2) near-duplicate image
pairs across splits, found by a perceptual hash (`imagehash.phash`, 64 bits) and a Hamming-distance threshold.
`NEAR_DUPLICATE_MAX_DISTANCE` = 6 was measured on the RadMini images: JPEG re-encoding (quality 75), halving
the size and a 10-20 % change of brightness or contrast move the hash by at most 6 bits (95 % of images by at
most 2-4), while the closest pair of images from different patients is 8 bits apart (an MR brain slice and an
unrelated head CT). The hash is not robust to crops or shifts of a few percent (typically 6-20 bits), so a
cropped copy can be missed; the threshold is a parameter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cbmir.errors import CbmirError
from cbmir.manifest import CASE_COLUMN, LEVELS, SPLITS, case_ids, row_labels
from cbmir.progress import hide_progress

NEAR_DUPLICATE_MAX_DISTANCE = 6  # bits of a 64-bit perceptual hash; see the module docstring
HASH_SIZE = 8  # imagehash's default: an 8 x 8 = 64-bit hash


class DataAnalysisError(CbmirError, ValueError):
    """A column, split or parameter of the data study that does not exist or makes no sense."""


def _column(manifest: pd.DataFrame, name: str) -> np.ndarray:
    """A manifest column, or a label level ("region", "label"; "modality" is a manifest column too)."""
    if name in manifest.columns:
        return manifest[name].astype(str).to_numpy()
    if name in LEVELS:
        return row_labels(manifest, name).astype(str)
    raise DataAnalysisError(
        f"count_table: column {name!r} is neither a manifest column nor a label level {list(LEVELS)}; "
        f"the manifest has {list(manifest.columns[:12])}{' ...' if len(manifest.columns) > 12 else ''}"
    )


def _order(values: Sequence[str]) -> list[str]:
    """Splits in the order train, val, test; anything else after them, sorted."""
    known = [s for s in SPLITS if s in values]
    return known + sorted(v for v in values if v not in SPLITS)


def count_table(manifest: pd.DataFrame, by: str | Sequence[str], columns: str | None = None) -> pd.DataFrame:
    """Images and cases per combination of `by` (manifest columns or label levels "region"/"label").

    Long form (`columns=None`): columns `*by, images, cases`, sorted by `by`. Wide form (e.g. `columns="split"`):
    one row per `by` combination with `<value> images` and `<value> cases` for each value of `columns` (splits
    in the order train, val, test), then `total images` and `total cases` (a case seen in two splits counts
    once in the total), sorted by total images, largest first.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise DataAnalysisError("count_table: parameter 'by' names no column")
    frame = pd.DataFrame({name: _column(manifest, name) for name in by})
    frame["_case"] = case_ids(manifest)
    if columns is None:
        g = frame.groupby(by, sort=True)
        return pd.DataFrame({"images": g.size(), "cases": g["_case"].nunique()}).reset_index()
    frame[columns] = _column(manifest, columns)
    g = frame.groupby([*by, columns], sort=True)
    long = pd.DataFrame({"images": g.size(), "cases": g["_case"].nunique()})
    wide = long.unstack(columns, fill_value=0)
    values = _order(list(wide.columns.get_level_values(columns).unique()))
    out = pd.DataFrame(index=wide.index)
    for value in values:
        out[f"{value} images"] = wide[("images", value)].astype(np.int64)
        out[f"{value} cases"] = wide[("cases", value)].astype(np.int64)
    totals = frame.groupby(by, sort=True)
    out["total images"] = totals.size()
    out["total cases"] = totals["_case"].nunique()
    return out.sort_values("total images", ascending=False, kind="stable").reset_index()


def cases_per_split(manifest: pd.DataFrame, level: str = "label") -> pd.DataFrame:
    """Images and cases of each class at `level` per split (wide; see `count_table`)."""
    return count_table(manifest, [level], columns="split")


def shared_cases(manifest: pd.DataFrame) -> pd.DataFrame:
    """Patients with images in more than one split: `dataset, patient_id, splits, images` (one row per patient)."""
    if CASE_COLUMN not in manifest.columns:
        return pd.DataFrame(columns=["dataset", CASE_COLUMN, "splits", "images"])
    cases = case_ids(manifest)
    frame = pd.DataFrame(
        {
            "case": cases,
            "dataset": manifest["dataset"].astype(str).to_numpy(),
            CASE_COLUMN: manifest[CASE_COLUMN].astype(str).to_numpy(),
            "split": manifest["split"].astype(str).to_numpy(),
        }
    )
    n_splits = frame.groupby("case")["split"].nunique()
    shared = frame[frame["case"].isin(n_splits.index[n_splits > 1])]
    rows = []
    for _, part in shared.groupby("case", sort=False):
        counts = part["split"].value_counts()
        rows.append(
            {
                "dataset": part["dataset"].iloc[0],
                CASE_COLUMN: part[CASE_COLUMN].iloc[0],
                "splits": ", ".join(_order(list(counts.index))),
                "images": ", ".join(f"{s} {counts[s]}" for s in _order(list(counts.index))),
            }
        )
    return pd.DataFrame(rows, columns=["dataset", CASE_COLUMN, "splits", "images"])


def image_hashes(
    paths: Sequence[str | os.PathLike], hash_size: int = HASH_SIZE, progress: bool = True
) -> np.ndarray:
    """Perceptual hashes (`imagehash.phash`) of the images, packed: uint8 [N, hash_size**2 / 8].

    Images are opened with `cbmir.images.load_image` (PNG, JPEG, DICOM); an unreadable one raises its
    `ImageLoadError` naming the file.
    """
    import imagehash
    from tqdm.auto import tqdm

    from cbmir.images import load_image

    if hash_size < 2 or (hash_size * hash_size) % 8:
        raise DataAnalysisError(
            f"image_hashes: parameter 'hash_size' = {hash_size}: hash_size**2 must be a multiple of 8"
        )
    out = np.zeros((len(paths), hash_size * hash_size // 8), dtype=np.uint8)
    for i, path in enumerate(
        tqdm(paths, desc="perceptual hashes", disable=hide_progress(progress), leave=False)
    ):
        out[i] = np.packbits(imagehash.phash(load_image(path), hash_size=hash_size).hash.ravel())
    return out


def near_duplicate_pairs(
    hashes: np.ndarray,
    splits: np.ndarray,
    cases: np.ndarray | None = None,
    max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE,
    split_pairs: Sequence[tuple[str, str]] = (("train", "test"), ("train", "val"), ("val", "test")),
) -> pd.DataFrame:
    """Pairs of rows in different splits whose hashes differ in at most `max_distance` bits.

    `hashes` uint8 [N, B] from `image_hashes`. Columns: `row_a, row_b` (positions; row_a in the first split of
    the pair), `split_a, split_b, distance, same_case` (same_case: both rows belong to one case; NA without
    `cases`). Sorted by distance, then rows. Exact search with a FAISS binary index (Hamming distance).
    """
    import faiss

    h = np.ascontiguousarray(hashes, dtype=np.uint8)
    splits = np.asarray(splits).astype(str)
    if h.ndim != 2 or len(h) != len(splits):
        raise DataAnalysisError(
            f"near_duplicate_pairs: parameter 'hashes' {h.shape} must be [N, bytes] with N = len(splits) = {len(splits)}"
        )
    if not 0 <= max_distance < 8 * h.shape[1]:
        raise DataAnalysisError(
            f"near_duplicate_pairs: parameter 'max_distance' = {max_distance} is outside 0..{8 * h.shape[1] - 1}"
        )
    rows = []
    for a, b in split_pairs:
        ra, rb = np.flatnonzero(splits == a), np.flatnonzero(splits == b)
        if not len(ra) or not len(rb):
            continue
        index = faiss.IndexBinaryFlat(8 * h.shape[1])
        index.add(h[ra])
        lims, dist, pos = index.range_search(h[rb], max_distance + 1)  # FAISS keeps distances < radius
        for q in range(len(rb)):
            for j in range(lims[q], lims[q + 1]):
                rows.append((int(ra[pos[j]]), int(rb[q]), a, b, int(dist[j])))
    out = pd.DataFrame(rows, columns=["row_a", "row_b", "split_a", "split_b", "distance"])
    if cases is None:
        out["same_case"] = pd.array([pd.NA] * len(out), dtype="boolean")
    else:
        cases = np.asarray(cases)
        out["same_case"] = (
            cases[out["row_a"].to_numpy(dtype=np.int64)] == cases[out["row_b"].to_numpy(dtype=np.int64)]
        )
    return out.sort_values(["distance", "row_a", "row_b"], ignore_index=True)


@dataclass
class LeakageAudit:
    """Patients shared across splits, near-duplicate pairs across splits (with file paths) and a summary."""

    shared_cases: pd.DataFrame
    near_duplicates: pd.DataFrame
    summary: pd.DataFrame
    max_distance: int


def leakage_audit(
    manifest: pd.DataFrame,
    data_root: str | os.PathLike | None = None,
    *,
    hashes: np.ndarray | None = None,
    max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE,
    progress: bool = True,
    check_images: bool = True,
) -> LeakageAudit:
    """Audit a manifest for leakage between splits.

    Hashes the images under `data_root` (or takes `hashes`, uint8 [N, B] from `image_hashes`, row-aligned with
    the manifest). `near_duplicates` columns: `filepath_a, filepath_b, split_a, split_b, distance, same_case,
    row_a, row_b`; `summary`: one row per check (`check, split pair, count`). `check_images=False` (no images,
    e.g. published embeddings only): shared patients only; no near-duplicate rows in the summary.
    """
    if not check_images:
        hashes = np.zeros((0, 8), dtype=np.uint8)
        manifest_for_pairs = manifest.iloc[:0]
    else:
        manifest_for_pairs = manifest
    if hashes is None:
        if data_root is None:
            raise DataAnalysisError(
                "leakage_audit: give parameter 'data_root' (to hash the images) or 'hashes'"
            )
        root = Path(data_root)
        hashes = image_hashes([root / p for p in manifest["filepath"]], progress=progress)
    if len(hashes) != len(manifest_for_pairs):
        raise DataAnalysisError(
            f"leakage_audit: parameter 'hashes' has {len(hashes)} rows for {len(manifest)} manifest rows"
        )
    shared = shared_cases(manifest)
    pairs = near_duplicate_pairs(
        hashes, manifest_for_pairs["split"].to_numpy(), case_ids(manifest_for_pairs), max_distance
    )
    paths = manifest["filepath"].astype(str).to_numpy()
    pairs.insert(0, "filepath_b", paths[pairs["row_b"].to_numpy(dtype=np.int64)])
    pairs.insert(0, "filepath_a", paths[pairs["row_a"].to_numpy(dtype=np.int64)])
    pairs = pairs[
        ["filepath_a", "filepath_b", "split_a", "split_b", "distance", "same_case", "row_a", "row_b"]
    ]
    check = "patients in more than one split"
    if CASE_COLUMN not in manifest.columns:
        check += f" (no {CASE_COLUMN} column: each image is its own case, so this check cannot find any)"
    summary = [{"check": check, "split pair": "any", "count": len(shared)}]
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")) if check_images else ():
        n = int(((pairs["split_a"] == a) & (pairs["split_b"] == b)).sum())
        summary.append(
            {
                "check": f"near-duplicate image pairs (phash distance <= {max_distance})",
                "split pair": f"{a}-{b}",
                "count": n,
            }
        )
    return LeakageAudit(shared, pairs, pd.DataFrame(summary), max_distance)


def sample_images(
    manifest: pd.DataFrame, by: str = "modality", per_group: int = 6, seed: int = 0
) -> dict[str, list[int]]:
    """A seeded sample of up to `per_group` rows of each `by` group, taken in turn from its labels: {group: rows}."""
    rng = np.random.default_rng(seed)
    labels = row_labels(manifest, "label")
    groups = _column(manifest, by)
    out: dict[str, list[int]] = {}
    for name in sorted(set(groups)):
        idx = np.flatnonzero(groups == name)
        by_label: dict[str, list[int]] = {}
        for i in idx[rng.permutation(len(idx))]:
            by_label.setdefault(str(labels[i]), []).append(int(i))
        picked: list[int] = []
        while len(picked) < per_group and any(by_label.values()):
            for lab in sorted(by_label):
                if by_label[lab] and len(picked) < per_group:
                    picked.append(by_label[lab].pop(0))
        out[str(name)] = picked
    return out


CAVEAT_SECTIONS = ("Near-duplicates", "Shortcuts a reader should know")  # of a data card, shown by notebook 1


def card_sections(card: str | os.PathLike, titles: Sequence[str] = CAVEAT_SECTIONS) -> str:
    """The `## ` sections of the markdown data card `card` whose titles are in `titles`, in the card's order,
    each under a `### ` heading (to sit inside a notebook's section). Raises CbmirError naming the file when it
    is missing or holds none of them."""
    path = Path(card)
    if not path.is_file():
        raise CbmirError(f"data card {path}: no such file (config key 'data_card')")
    kept, current = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip() if line[3:].strip() in titles else None
            if current:
                kept.append(f"### {current}")
            continue
        if line.startswith("# "):
            current = None
        elif current:
            kept.append(line)
    if not kept:
        raise CbmirError(f"data card {path}: none of the sections {list(titles)}")
    return "\n".join(kept).strip() + "\n"
