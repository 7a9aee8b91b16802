"""CheXpert v1.0 preparation on a fake raw tree in the official layout."""

from __future__ import annotations

import pytest
from cbmir.datasets.common import DatasetError
from cbmir.datasets.prepare import prepare
from cbmir.manifest import label_columns
from fake_raw import CHEXPERT_TRAIN, make_chexpert, rows_of

T = "CheXpert/CheXpert-v1.0/train/"
EXPECTED = [  # seed 0: patients 2 and 9 form val (10 % of 11 patients, rounded as train_test_split does)
    (T + "patient00001/study1/view1_frontal.jpg", "train", "XR/chest/Cardiomegaly", "patient00001"),
    (T + "patient00001/study1/view2_lateral.jpg", "train", "XR/chest/Cardiomegaly", "patient00001"),
    (T + "patient00006/study1/view1_frontal.jpg", "train", "XR/chest/Pleural Effusion", "patient00006"),
    (T + "patient00007/study1/view1_frontal.jpg", "train", "XR/chest/Lung Opacity", "patient00007"),
    (T + "patient00007/study2/view1_frontal.jpg", "train", "XR/chest/Lung Opacity", "patient00007"),
    (T + "patient00008/study1/view1_frontal.jpg", "train", "XR/chest/Pneumothorax", "patient00008"),
    (T + "patient00010/study1/view1_frontal.jpg", "train", "XR/chest/Fracture", "patient00010"),
    (
        T + "patient00011/study1/view1_frontal.jpg",
        "train",
        "XR/chest/Enlarged Cardiomediastinum",
        "patient00011",
    ),
    (T + "patient00002/study1/view1_frontal.jpg", "val", "XR/chest/No Finding", "patient00002"),
    (T + "patient00009/study1/view1_frontal.jpg", "val", "XR/chest/Consolidation", "patient00009"),
    (
        "CheXpert/CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg",
        "test",
        "XR/chest/Pleural Other",
        "patient64541",
    ),
    (
        "CheXpert/CheXpert-v1.0/valid/patient64542/study1/view2_lateral.jpg",
        "test",
        "XR/chest/Lung Lesion",
        "patient64542",
    ),
]


def test_exact_rows_and_rules(tmp_path):
    df = prepare("chexpert", make_chexpert(tmp_path / "CheXpert"), tmp_path / "c.csv")
    # -1 and blank are negative (patient 1 keeps Cardiomegaly despite Edema -1); lateral views kept;
    # Support Devices ignored (patient 2 is No Finding); valid.csv is the test set.
    assert rows_of(df) == EXPECTED
    labels = label_columns(df)
    assert len(labels) == 13 and "XR/chest/No Finding" in labels
    assert "XR/chest/Support Devices" not in labels
    counts = df.attrs["report"]["counts"]
    assert counts["multi_label_dropped"] == 2  # Edema+Pneumonia in train, Edema+Cardiomegaly in valid
    assert counts["no_label_dropped"] == 2  # only Support Devices; only an uncertain -1


def test_patient_split_and_row_order_independence(tmp_path):
    train = [(p, s, "frontal", {"Edema": "1.0"}) for p in range(1, 31) for s in (1, 2)]
    a = prepare("chexpert", make_chexpert(tmp_path / "a" / "CheXpert", train=train), tmp_path / "a.csv")
    make_chexpert(tmp_path / "b" / "CheXpert", train=train, shuffle=True)
    prepare("chexpert", tmp_path / "b" / "CheXpert", tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    by_split = a.groupby("split")["patient_id"].agg(set)
    assert not by_split["train"] & by_split["val"] and len(by_split["val"]) == 3


def test_missing_files_are_reported(tmp_path):
    skip = "CheXpert-v1.0/train/patient00006/study1/view1_frontal.jpg"
    raw = make_chexpert(tmp_path / "CheXpert", skip_images={skip})
    df = prepare("chexpert", raw, tmp_path / "c.csv")
    assert df.attrs["report"]["missing"] == [{"filepath": "CheXpert/" + skip, "problem": "missing"}]
    assert len(df) == len(EXPECTED) - 1
    unchecked = prepare("chexpert", raw, tmp_path / "u.csv", check_files=False)
    assert len(unchecked) == len(EXPECTED) and "missing_files" not in unchecked.attrs["report"]["counts"]


def test_bad_label_value_names_file_row_and_column(tmp_path):
    train = [*CHEXPERT_TRAIN[:2], (12, 1, "frontal", {"Edema": "2.0"})]
    raw = make_chexpert(tmp_path / "CheXpert", train=train)
    with pytest.raises(DatasetError, match=r"train.csv: row 3, column 'Edema'.*'2.0'"):
        prepare("chexpert", raw, tmp_path / "c.csv")


def test_missing_label_column_is_named(tmp_path):
    raw = make_chexpert(tmp_path / "CheXpert")
    path = raw / "CheXpert-v1.0" / "valid.csv"
    path.write_text(path.read_text().replace("Pleural Other", "Pleural Oth"))
    with pytest.raises(DatasetError, match=r"valid.csv: missing column\(s\) \['Pleural Other'\]"):
        prepare("chexpert", raw, tmp_path / "c.csv")


def test_drop_uncertain_reproduces_the_authors_train_filter(tmp_path):
    raw = make_chexpert(tmp_path / "CheXpert")
    df = prepare("chexpert", raw, tmp_path / "c.csv", drop_uncertain=True)
    assert rows_of(df) == EXPECTED[2:]  # patient 1 (Edema -1) is gone; the split is unchanged
    assert df.attrs["report"]["counts"]["uncertain_dropped"] == 3  # patient 1 twice, patient 5
    with pytest.raises(ValueError, match="parameter 'drop_uncertain' applies to chexpert only"):
        prepare("nih14", raw, tmp_path / "n.csv", drop_uncertain=True)
