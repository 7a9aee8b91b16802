"""MIMIC-CXR-JPG 2.0.0 preparation on a fake raw tree in the official layout."""

from __future__ import annotations

import pytest
from cbmir.datasets.common import DatasetError
from cbmir.datasets.prepare import prepare
from cbmir.manifest import label_columns
from fake_raw import MIMIC_SPLIT, make_mimic, rows_of

F = "mimic/files/mimic-cxr-jpg/2.0.0/files/"
EXPECTED = [
    (
        F + "p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg",
        "train",
        "XR/chest/No Finding",
        "10000032",
    ),
    (
        F + "p10/p10000032/s50414267/174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.jpg",
        "train",
        "XR/chest/No Finding",
        "10000032",
    ),
    (
        F + "p10/p10000032/s53189527/2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab.jpg",
        "train",
        "XR/chest/Edema",
        "10000032",
    ),
    (
        F + "p10/p10000898/s57375967/ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c.jpg",
        "val",
        "XR/chest/Pleural Effusion",
        "10000898",
    ),
]


@pytest.mark.parametrize("gz", [True, False])
def test_exact_rows_and_rules(tmp_path, gz):
    df = prepare("mimic", make_mimic(tmp_path / "mimic", gz=gz), tmp_path / "m.csv")
    # validate -> val; -1 is negative and Support Devices ignored (study 53189527 is Edema only)
    assert rows_of(df) == EXPECTED
    labels = label_columns(df)
    assert len(labels) == 13 and "XR/chest/Support Devices" not in labels
    counts = df.attrs["report"]["counts"]
    assert counts["studies_without_labels"] == 1 and counts["images_without_labels"] == 1
    assert counts["multi_label_dropped"] == 1  # Consolidation + Pneumonia
    assert counts["no_label_dropped"] == 1  # the test study has only Support Devices


def test_raw_root_may_be_the_version_folder(tmp_path):
    make_mimic(tmp_path / "mimic")
    df = prepare("mimic", tmp_path / "mimic" / "files" / "mimic-cxr-jpg" / "2.0.0", tmp_path / "m.csv")
    assert df["filepath"].iloc[0] == "2.0.0/" + EXPECTED[0][0].split("2.0.0/", 1)[1]


def test_shuffled_input_gives_identical_bytes(tmp_path):
    prepare("mimic", make_mimic(tmp_path / "a" / "mimic"), tmp_path / "a.csv")
    prepare("mimic", make_mimic(tmp_path / "b" / "mimic", shuffle=True), tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_missing_files_reported(tmp_path):
    raw = make_mimic(tmp_path / "mimic", skip_images={MIMIC_SPLIT[4][0]})
    df = prepare("mimic", raw, tmp_path / "m.csv", on_missing="keep")
    assert df.attrs["report"]["missing"] == [{"filepath": EXPECTED[3][0], "problem": "missing"}]
    assert rows_of(df) == EXPECTED


def test_unknown_split_value_is_named(tmp_path):
    split = [*MIMIC_SPLIT[:2], ("abc", 50414267, 10000032, "valid")]
    with pytest.raises(DatasetError, match=r"split.csv.gz: row 3, column 'split'.*'valid'"):
        prepare("mimic", make_mimic(tmp_path / "mimic", split=split), tmp_path / "m.csv")
