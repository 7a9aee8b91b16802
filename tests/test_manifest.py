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
        mod, region = label.split("/")[:2]
        data.append(
            {"filepath": fp, "dataset": "toy", "split": split, "modality": mod, "anatomic_region": region}
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


# ------------------------------------------------------------------------ label levels agree with columns
@pytest.mark.parametrize(
    ("column", "value", "pattern"),
    [
        (
            "modality",
            "MR",
            r"row 1 \(filepath 'a.png'\): column 'modality' is 'MR' but the row's label 'CT/lung/nodule' "
            r"has modality 'CT'",
        ),
        (
            "anatomic_region",
            "brain",
            r"row 1 \(filepath 'a.png'\): column 'anatomic_region' is 'brain' but the row's label "
            r"'CT/lung/nodule' has region 'lung'",
        ),
        ("modality", "ct", r".*column 'modality' is 'ct' but .* has modality 'CT'"),  # compared exactly
    ],
)
def test_modality_and_region_must_agree_with_the_label_path(tmp_path, column, value, pattern):
    df = small(good_rows())
    df.loc[0, column] = value
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"bad\.csv, " + pattern):
        read_manifest(path)


def test_levels_agree_check_matches_a_row_by_row_reference():
    """The vectorised check flags exactly the rows a plain loop over the label names would flag."""
    rng = np.random.default_rng(3)
    labels = ["CT/lung/a", "CT/liver/b", "MR/brain/c", "XR/chest", "US/thyroid/nodule/x"]
    for _ in range(20):
        chosen = rng.choice(labels, size=30)
        df = small([(f"{i}.png", "train", lab) for i, lab in enumerate(chosen)], labels=labels)
        flips = rng.random(30) < 0.1
        df.loc[flips, "anatomic_region"] = rng.choice(
            ["lung", "liver", "brain", "chest", "thyroid"], flips.sum()
        )
        expected_bad = [
            i
            for i in range(30)
            if df["modality"].iloc[i] != chosen[i].split("/")[0]
            or df["anatomic_region"].iloc[i] != chosen[i].split("/")[1]
        ]
        if not expected_bad:
            validate_manifest(df)
            continue
        with pytest.raises(
            ManifestError, match=rf"row {expected_bad[0] + 1} \(filepath '{expected_bad[0]}.png'\)"
        ):
            validate_manifest(df)


# ---------------------------------------------------------------------------- not a UTF-8 CSV text file
@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (PAPER_CSV.encode("utf-16"), r"UTF-16 text, not a CSV text file; expected a CSV text file in UTF-8"),
        (PAPER_CSV.encode("utf-16-le"), r"NUL byte on line 1 .*expected a CSV text file in UTF-8"),
        (PAPER_CSV.replace("nih14", "nïh14").encode("latin-1"), r"not UTF-8 text \(line 2 has byte 0xef"),
        (b"PK\x03\x04" + bytes(200), r"a ZIP archive \(an .xlsx or .ods spreadsheet\?\)"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), r"an OLE2 file \(an .xls spreadsheet\?\)"),
        (PAPER_CSV.replace(",", ";").encode(), r"found columns separated by ';'; expected comma-separated"),
        (b"just some text\nmore\n", r"found one column 'just some text'; expected comma-separated"),
        (b"a,b\n1,2\n1,2,3,4\n", r"cannot read as CSV \(Error tokenizing data.*line 3, saw 4"),
        (b"", r"cannot read as CSV"),
    ],
)
def test_files_that_are_not_utf8_csv_are_named(tmp_path, content, pattern):
    path = tmp_path / "sheet.csv"
    path.write_bytes(content)
    with pytest.raises(ManifestError, match=pattern) as info:
        read_manifest(path)
    assert str(info.value).startswith(f"{path}: ")


def test_random_bytes_are_refused_with_the_file_name(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(20):
        path = tmp_path / f"random{i}.csv"
        path.write_bytes(rng.integers(0, 256, size=int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
        with pytest.raises(ManifestError) as info:
            read_manifest(path)
        assert str(info.value).startswith(f"{path}: ") and "UTF-8" in str(info.value), str(info.value)


def test_utf8_with_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(PAPER_CSV.encode("utf-8-sig"))
    assert list(read_manifest(path).columns[:5]) == list(BASE_COLUMNS)
