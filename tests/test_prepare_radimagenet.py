"""RadImageNet preparation on a fake raw tree in the official layout."""

from __future__ import annotations

import pytest
from cbmir.datasets.common import DatasetError
from cbmir.datasets.prepare import prepare
from cbmir.manifest import label_columns
from fake_raw import RADIMAGENET_ROWS, make_radimagenet, rows_of

R = "radiology_ai/"
EXPECTED = [
    (R + "CT/lung/nodule/lung012345.png", "train", "CT/lung/nodule", "CT", "lung"),
    (R + "CT/lung/normal/lung000001.png", "train", "CT/lung/normal", "CT", "lung"),
    (R + "MR/knee/acl_pathology/knee000123.png", "train", "MR/knee/acl_pathology", "MR", "knee"),
    (R + "US/aorta/aorta000001.png", "train", "US/aorta/normal", "US", "aorta"),
    (R + "US/thyroid/thyroid000007.png", "train", "US/thyroid/normal", "US", "thyroid"),
    (R + "US/thyroid_nodule/thyroid_nodule000003.png", "train", "US/thyroid/nodule", "US", "thyroid"),
    (R + "CT/lung/nodule/lung054321.png", "val", "CT/lung/nodule", "CT", "lung"),
    (R + "US/kidney/kidney000010.png", "val", "US/kidney/normal", "US", "kidney"),
    (R + "CT/lung/nodule/lung099999.png", "test", "CT/lung/nodule", "CT", "lung"),
    (R + "MR/knee/acl_pathology/knee000999.png", "test", "MR/knee/acl_pathology", "MR", "knee"),
    (R + "US/thyroid_nodule/thyroid_nodule000004.png", "test", "US/thyroid/nodule", "US", "thyroid"),
]


def _rows(df):
    return [
        (fp, sp, lab, m, r)
        for (fp, sp, lab, _), m, r in zip(rows_of(df), df["modality"], df["anatomic_region"], strict=True)
    ]


def test_exact_rows_us_normal_and_thyroid_nodule(tmp_path):
    df = prepare("radimagenet", make_radimagenet(tmp_path / "radiology_ai"), tmp_path / "r.csv")
    assert _rows(df) == EXPECTED
    assert sorted(label_columns(df)) == sorted({e[2] for e in EXPECTED})
    assert "US/thyroid_nodule/normal" not in label_columns(df)
    assert set(df["dataset"]) == {"radiology_ai"}


def test_ignore_list_matches_csv_filename_or_filepath(tmp_path):
    raw = make_radimagenet(tmp_path / "radiology_ai")
    ignore = tmp_path / "ignore_list.txt"
    ignore.write_text(f"{RADIMAGENET_ROWS[0][1]}\n\n{EXPECTED[7][0]}\nradiology_ai/CT/not/listed.png\n")
    df = prepare("radimagenet", raw, tmp_path / "r.csv", ignore_list=ignore)
    assert _rows(df) == [e for i, e in enumerate(EXPECTED) if i not in (0, 7)]
    assert df.attrs["report"]["counts"]["ignored"] == 2


def test_twice_shuffled_identical_and_duplicates_counted(tmp_path):
    prepare("radimagenet", make_radimagenet(tmp_path / "a" / "radiology_ai"), tmp_path / "a.csv")
    rows = [*RADIMAGENET_ROWS, RADIMAGENET_ROWS[3]]
    b = prepare(
        "radimagenet",
        make_radimagenet(tmp_path / "b" / "radiology_ai", rows=rows, shuffle=True),
        tmp_path / "b.csv",
    )
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert b.attrs["report"]["counts"]["duplicate_rows"] == 1


def test_missing_files_reported_and_kept_on_request(tmp_path):
    skip = RADIMAGENET_ROWS[4][1]
    raw = make_radimagenet(tmp_path / "radiology_ai", skip_images={skip})
    dropped = prepare("radimagenet", raw, tmp_path / "d.csv")
    kept = prepare("radimagenet", raw, tmp_path / "k.csv", on_missing="keep")
    assert dropped.attrs["report"]["missing"] == [{"filepath": skip, "problem": "missing"}]
    assert skip not in set(dropped["filepath"]) and _rows(kept) == EXPECTED


def test_empty_file_counts_as_unreadable(tmp_path):
    raw = make_radimagenet(tmp_path / "radiology_ai")
    (raw / "CT/lung/normal/lung000001.png").write_bytes(b"")
    df = prepare("radimagenet", raw, tmp_path / "r.csv")
    assert df.attrs["report"]["missing"] == [{"filepath": EXPECTED[1][0], "problem": "empty file"}]


@pytest.mark.parametrize(
    ("filename", "message"),
    [
        ("radiology_ai/CT/lung/lung1.png", "CT images need a pathology folder"),
        ("radiology_ai/XR/chest/normal/x.png", "unknown modality 'XR'"),
        ("radiology_ai/../CT/lung/normal/x.png", "expected <top>/<modality>"),
        ("/radiology_ai/CT/lung/normal/x.png", "expected <top>/<modality>"),
    ],
)
def test_bad_filenames_name_file_and_row(tmp_path, filename, message):
    raw = make_radimagenet(tmp_path / "radiology_ai", rows=[*RADIMAGENET_ROWS[:2], ("train", filename)])
    with pytest.raises(DatasetError, match=rf"RadiologyAI_train.csv: row 3, column 'filename'.*{message}"):
        prepare("radimagenet", raw, tmp_path / "r.csv", check_files=False)


def test_image_in_two_splits_is_an_error(tmp_path):
    raw = make_radimagenet(
        tmp_path / "radiology_ai", rows=[*RADIMAGENET_ROWS, ("test", RADIMAGENET_ROWS[0][1])]
    )
    with pytest.raises(DatasetError, match="more than one split"):
        prepare("radimagenet", raw, tmp_path / "r.csv")
