"""NIH ChestX-ray14 preparation on a fake raw tree in the official layout."""

from __future__ import annotations

import pytest
from cbmir.datasets.common import DatasetError
from cbmir.datasets.prepare import prepare
from cbmir.manifest import label_columns, read_manifest
from fake_raw import NIH_ROWS, make_nih, rows_of

EXPECTED = [  # seed 0: patient 10 is the one val patient of the ten train_val patients
    ("nih14/images_001/images/00000001_000.png", "train", "XR/chest/Cardiomegaly", "1"),
    ("nih14/images_001/images/00000002_000.png", "train", "XR/chest/No Finding", "2"),
    ("nih14/images_001/images/00000004_000.png", "train", "XR/chest/Pleural Thickening", "4"),
    ("nih14/images_001/images/00000005_001.png", "train", "XR/chest/Infiltration", "5"),
    ("nih14/images_001/images/00000007_000.png", "train", "XR/chest/Atelectasis", "7"),
    ("nih14/images_001/images/00000009_000.png", "train", "XR/chest/Fibrosis", "9"),
    ("nih14/images_002/images/00000003_000.png", "train", "XR/chest/Pleural Effusion", "3"),
    ("nih14/images_002/images/00000005_000.png", "train", "XR/chest/Infiltration", "5"),
    ("nih14/images_002/images/00000006_000.png", "train", "XR/chest/Pneumothorax", "6"),
    ("nih14/images_002/images/00000008_000.png", "train", "XR/chest/Edema", "8"),
    ("nih14/images_002/images/00000010_000.png", "val", "XR/chest/Consolidation", "10"),
    ("nih14/images_001/images/00000011_000.png", "test", "XR/chest/Hernia", "11"),
    ("nih14/images_001/images/00000013_000.png", "test", "XR/chest/Pneumonia", "13"),
]


def test_exact_rows_labels_and_counts(tmp_path):
    raw = make_nih(tmp_path / "nih14")
    df = prepare("nih14", raw, tmp_path / "out" / "nih14.csv")
    assert rows_of(df) == EXPECTED
    assert set(df["dataset"]) == {"nih14"} and set(df["modality"]) == {"XR"}
    labels = label_columns(df)
    assert (
        len(labels) == 15
        and "XR/chest/Pleural Effusion" in labels
        and "XR/chest/Pleural Thickening" in labels
    )
    assert not [c for c in labels if "Effusion" in c and c != "XR/chest/Pleural Effusion"]
    counts = df.attrs["report"]["counts"]
    assert counts["multi_label_dropped"] == 2  # `Cardiomegaly|Emphysema`, `Mass|Nodule`
    assert counts["entries_in_no_list"] == 1 and counts["missing_files"] == 0
    assert counts["images_written"] == len(EXPECTED)
    back = read_manifest(tmp_path / "out" / "nih14.csv")
    assert list(back["filepath"]) == [r[0] for r in EXPECTED]


def test_patient_level_split_never_shares_a_patient(tmp_path):
    rows = [(f"{p:08d}_{k:03d}.png", "Mass", p, "tv") for p in range(1, 41) for k in range(3)]
    df = prepare("nih14", make_nih(tmp_path / "nih14", rows=rows), tmp_path / "n.csv", check_files=False)
    by_split = df.groupby("split")["patient_id"].agg(set)
    assert not by_split["train"] & by_split["val"]
    assert len(by_split["val"]) == 4 and len(by_split["train"]) == 36  # 90/10 of 40 patients


def test_twice_and_shuffled_give_identical_bytes(tmp_path):
    prepare("nih14", make_nih(tmp_path / "a" / "nih14"), tmp_path / "a.csv")
    prepare("nih14", make_nih(tmp_path / "a" / "nih14"), tmp_path / "a2.csv")
    prepare("nih14", make_nih(tmp_path / "b" / "nih14", shuffle=True), tmp_path / "b.csv")
    first = (tmp_path / "a.csv").read_bytes()
    assert first == (tmp_path / "a2.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.report.json").read_bytes() == (tmp_path / "b.report.json").read_bytes()


def test_seed_changes_the_split(tmp_path):
    rows = [(f"{p:08d}_000.png", "Mass", p, "tv") for p in range(1, 41)]
    raw = make_nih(tmp_path / "nih14", rows=rows)
    a = prepare("nih14", raw, tmp_path / "a.csv", seed=0)
    b = prepare("nih14", raw, tmp_path / "b.csv", seed=1)
    assert set(a.loc[a["split"] == "val", "patient_id"]) != set(b.loc[b["split"] == "val", "patient_id"])


def test_missing_files_reported_then_dropped_or_kept(tmp_path):
    raw = make_nih(tmp_path / "nih14", skip_images={"00000002_000.png"})
    dropped = prepare("nih14", raw, tmp_path / "d.csv")
    report = dropped.attrs["report"]
    assert report["counts"]["missing_files"] == 1 and report["counts"]["not_located"] == 1
    assert report["missing"] == [{"filepath": "nih14/images/00000002_000.png", "problem": "missing"}]
    assert "nih14/images/00000002_000.png" not in set(dropped["filepath"])
    kept = prepare("nih14", raw, tmp_path / "k.csv", on_missing="keep")
    assert "nih14/images/00000002_000.png" in set(kept["filepath"])
    assert len(kept) == len(dropped) + 1 and kept.attrs["report"]["counts"]["missing_files"] == 1


def test_unknown_finding_names_file_and_row(tmp_path):
    rows = [*NIH_ROWS[:2], ("00000099_000.png", "Cardiomegaly|Covid", 99, "test")]
    raw = make_nih(tmp_path / "nih14", rows=rows)
    with pytest.raises(DatasetError, match=r"Data_Entry_2017.csv: row 3, column 'Finding Labels'.*'Covid'"):
        prepare("nih14", raw, tmp_path / "x.csv")


def test_missing_list_file_is_named(tmp_path):
    raw = make_nih(tmp_path / "nih14")
    (raw / "test_list.txt").unlink()
    with pytest.raises(DatasetError, match="test_list.txt"):
        prepare("nih14", raw, tmp_path / "x.csv")


def test_nothing_left_is_an_error_not_an_empty_file(tmp_path):
    raw = make_nih(tmp_path / "nih14", rows=[NIH_ROWS[1], NIH_ROWS[13]])
    with pytest.raises(ValueError, match="no single-label image left.*'multi_label_dropped': 2"):
        prepare("nih14", raw, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
