"""Manifest reading, validation and concatenation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cbmir.manifest import (
    BASE_COLUMNS,
    LEVELS,
    SPLITS,
    ManifestError,
    concat_manifests,
    label_columns,
    read_manifest,
    row_labels,
    split_rows,
    validate_manifest,
)

PAPER_CSV = """filepath,dataset,split,modality,anatomic_region,XR/chest/No Finding,XR/chest/Pneumonia,XR/chest/Pleural Effusion
images_001/a.png,nih14,train,XR,chest,1.0,0.0,0.0
images_001/b.png,nih14,train,XR,chest,0.0,1.0,0.0
images_002/c.png,nih14,val,XR,chest,0.0,0.0,1.0
images_002/d.png,nih14,test,XR,chest,0.0,1.0,0.0
"""


def small(rows: list[tuple[str, str, str]], labels=("CT/lung/nodule", "MR/knee/acl", "XR/chest/Edema")):
    """A manifest from (filepath, split, label) triples."""
    data = []
    for fp, split, label in rows:
        mod = label.split("/")[0]
        data.append(
            {"filepath": fp, "dataset": "toy", "split": split, "modality": mod, "anatomic_region": "r"}
            | {c: int(c == label) for c in labels}
        )
    return pd.DataFrame(data)


def write(tmp_path, text: str, name: str = "m.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_paper_csv_unchanged(tmp_path):
    df = read_manifest(write(tmp_path, PAPER_CSV))
    assert list(df.columns[:5]) == list(BASE_COLUMNS)
    assert label_columns(df) == ["XR/chest/No Finding", "XR/chest/Pneumonia", "XR/chest/Pleural Effusion"]
    assert df[label_columns(df)].dtypes.unique().tolist() == [np.dtype("int8")]
    assert row_labels(df).tolist() == [
        "XR/chest/No Finding",
        "XR/chest/Pneumonia",
        "XR/chest/Pleural Effusion",
        "XR/chest/Pneumonia",
    ]
    assert split_rows(df, "train").tolist() == [0, 1]
    assert split_rows(df, "test").dtype == np.int64


def test_leading_unnamed_index_column_is_dropped(tmp_path):
    df0 = read_manifest(write(tmp_path, PAPER_CSV))
    df0.to_csv(tmp_path / "with_index.csv")  # pandas default: unnamed index column first
    df = read_manifest(tmp_path / "with_index.csv")
    pd.testing.assert_frame_equal(df, df0)


def test_metadata_columns_kept(tmp_path):
    text = PAPER_CSV.replace("Effusion\n", "Effusion,patient_id\n", 1)
    lines = text.strip().split("\n")
    lines = [lines[0]] + [line + f",p{i}" for i, line in enumerate(lines[1:])]
    df = read_manifest(write(tmp_path, "\n".join(lines) + "\n"))
    assert df["patient_id"].tolist() == ["p0", "p1", "p2", "p3"]
    assert "patient_id" not in label_columns(df)


def test_row_labels_levels():
    df = small(
        [("a", "train", "CT/lung/nodule"), ("b", "test", "MR/knee/acl"), ("c", "val", "XR/chest/Edema")]
    )
    assert set(LEVELS) == {"modality", "region", "label"}
    assert row_labels(df, "modality").tolist() == ["CT", "MR", "XR"]
    assert row_labels(df, "region").tolist() == ["CT/lung", "MR/knee", "XR/chest"]
    assert row_labels(df, "label").tolist() == ["CT/lung/nodule", "MR/knee/acl", "XR/chest/Edema"]
    with pytest.raises(ManifestError, match="level"):
        row_labels(df, "organ")
    with pytest.raises(ManifestError, match="split"):
        split_rows(df, "validate")
    assert SPLITS == ("train", "val", "test")


def test_concat_union_of_labels_and_sources(tmp_path):
    a = small([("a1", "train", "CT/lung/nodule")], labels=("CT/lung/nodule",))
    b = small([("b1", "test", "XR/chest/Edema"), ("b2", "val", "XR/chest/Edema")], labels=("XR/chest/Edema",))
    b["patient_id"] = ["p1", "p2"]
    out = concat_manifests([a, b])
    assert label_columns(out) == ["CT/lung/nodule", "XR/chest/Edema"]
    assert out[label_columns(out)].to_numpy().tolist() == [[1, 0], [0, 1], [0, 1]]
    assert out["patient_id"].isna().tolist() == [True, False, False]
    # duplicates across files name the file and its own row
    a.to_csv(tmp_path / "a.csv", index=False)
    c = small(
        [("x", "train", "CT/lung/nodule"), ("a1", "test", "CT/lung/nodule")], labels=("CT/lung/nodule",)
    )
    c.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(ManifestError, match=r"c\.csv, row 2 \(filepath 'a1'\).*a\.csv, row 1"):
        read_manifest([tmp_path / "a.csv", tmp_path / "c.csv"])
    b.to_csv(tmp_path / "b.csv", index=False)
    both = read_manifest([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert both["filepath"].tolist() == ["a1", "b1", "b2"]
    assert row_labels(both).tolist() == ["CT/lung/nodule", "XR/chest/Edema", "XR/chest/Edema"]


def good_rows():
    return [
        ("a.png", "train", "CT/lung/nodule"),
        ("b.png", "test", "MR/knee/acl"),
        ("c.png", "val", "XR/chest/Edema"),
    ]


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda df: df.drop(columns=["split"]), r"missing column\(s\) \['split'\]"),
        (
            lambda df: df.assign(split=["train", "validate", "val"]),
            r"row 2 \(filepath 'b.png'\): column 'split' has 'validate'",
        ),
        (
            lambda df: df.assign(**{"MR/knee/acl": [0, 0, 0]}),
            r"row 2 \(filepath 'b.png'\): no label column is 1",
        ),
        (
            lambda df: df.assign(**{"MR/knee/acl": [1, 1, 0]}),
            r"row 1 \(filepath 'a.png'\): 2 label columns are 1",
        ),
        (
            lambda df: df.assign(**{"XR/chest/Edema": [0, 0, 2]}),
            r"row 3 \(filepath 'c.png'\): label column 'XR/chest/Edema' has 2",
        ),
        (
            lambda df: df.assign(**{"XR/chest/Edema": [0, 0, "yes"]}),
            r"row 3 .*label column 'XR/chest/Edema' has 'yes'",
        ),
        (
            lambda df: df.assign(filepath=["a.png", "b.png", "a.png"]),
            r"row 3 \(filepath 'a.png'\): column 'filepath' duplicates .*row 1",
        ),
        (lambda df: df.assign(filepath=["a.png", "/abs/b.png", "c.png"]), r"row 2 .*'filepath' is absolute"),
        (
            lambda df: df.assign(filepath=["a.png", "b.png", "C:\\x\\c.png"]),
            r"row 3 .*'filepath' is absolute",
        ),
        (
            lambda df: df.assign(filepath=["x/../../a.png", "b.png", "c.png"]),
            r"row 1 .*escapes the data root",
        ),
        (lambda df: df.iloc[:0], r"no rows"),
        (lambda df: df[list(BASE_COLUMNS)], r"no label columns"),
    ],
)
def test_validation_errors_name_file_row_column(tmp_path, mutate, pattern):
    df = mutate(small(good_rows()))
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ManifestError, match=pattern) as info:
        read_manifest(path)
    assert "bad.csv" in str(info.value)
    with pytest.raises(ManifestError, match=pattern):
        validate_manifest(df, source="frame")


def test_empty_cell_in_label_or_base_column(tmp_path):
    text = PAPER_CSV.replace(
        "images_002/c.png,nih14,val,XR,chest,0.0,0.0,1.0", "images_002/c.png,nih14,val,XR,chest,0.0,,1.0"
    )
    with pytest.raises(ManifestError, match=r"m.csv, row 3 .*'XR/chest/Pneumonia' has an empty cell"):
        read_manifest(write(tmp_path, text))
    text = PAPER_CSV.replace("images_001/b.png,nih14,train", "images_001/b.png,,train")
    with pytest.raises(ManifestError, match=r"row 2 .*column 'dataset' is empty"):
        read_manifest(write(tmp_path, text))


def test_missing_file_and_empty_list(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="empty list"):
        read_manifest([])
