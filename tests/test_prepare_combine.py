"""Combining prepared datasets, the authors' published CSV format, summary, CLI and the patient split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cbmir.cli import main
from cbmir.datasets.common import patient_split
from cbmir.datasets.prepare import combine, prepare, summary
from cbmir.manifest import label_columns, read_manifest
from fake_raw import make_chexpert, make_mimic, make_nih, make_radimagenet

NIH_ORDER = [  # the authors' column order for NIH (their script's list, renamed)
    "No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Infiltration",
    "Mass", "Nodule", "Pneumonia", "Pneumothorax", "Emphysema", "Fibrosis", "Pleural Thickening", "Hernia",
]  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    out = tmp_path_factory.mktemp("out")
    raws = {
        "nih14": make_nih(root / "nih14"),
        "chexpert": make_chexpert(root / "CheXpert"),
        "mimic": make_mimic(root / "mimic"),
        "radimagenet": make_radimagenet(root / "radiology_ai"),
    }
    return {
        name: (prepare(name, raw, out / f"{name}.csv"), out / f"{name}.csv") for name, raw in raws.items()
    }


def test_combined_table_validates_and_merges_chest_labels(prepared, tmp_path):
    paths = [p for _, p in prepared.values()]
    df = combine(paths, tmp_path / "all.csv")
    back = read_manifest(tmp_path / "all.csv")
    assert len(back) == len(df) == sum(len(d) for d, _ in prepared.values())
    labels = label_columns(back)
    assert labels == sorted(labels) and len(labels) == len(set(labels))
    chest = [c for c in labels if c.startswith("XR/chest/")]
    assert len(chest) == 20  # 15 NIH + 5 CheXpert-only findings
    effusion = back[back["XR/chest/Pleural Effusion"] == 1]
    assert set(effusion["dataset"]) == {"nih14", "CheXpert", "mimic"}
    nih = back[back["dataset"] == "nih14"]
    assert (nih["XR/chest/Fracture"] == 0).all() and (nih["CT/lung/nodule"] == 0).all()
    assert "patient_id" in back.columns


def test_combine_is_byte_stable_and_independent_of_input_order(prepared, tmp_path):
    paths = [p for _, p in prepared.values()]
    combine(paths, tmp_path / "a.csv")
    combine(paths[::-1], tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_authors_published_format_loads_and_combines(prepared, tmp_path):
    ours, _ = prepared["nih14"]
    theirs = ours.drop(columns=["patient_id"])[
        ["filepath", "dataset", "split", "modality", "anatomic_region"] + ["XR/chest/" + n for n in NIH_ORDER]
    ]
    theirs = theirs.astype({c: float for c in label_columns(theirs)})
    theirs.to_csv(tmp_path / "nih14.csv", index=False)  # written as 0.0 / 1.0, like the Zenodo CSVs
    assert "1.0" in (tmp_path / "nih14.csv").read_text()
    loaded = read_manifest(tmp_path / "nih14.csv")
    assert list(loaded["filepath"]) == list(ours["filepath"])
    df = combine([tmp_path / "nih14.csv", prepared["chexpert"][1]], tmp_path / "all.csv")
    assert set(df["dataset"]) == {"nih14", "CheXpert"}
    assert df["patient_id"][df["dataset"] == "nih14"].isna().all()
    assert ",1.0," not in (tmp_path / "all.csv").read_text()


def test_summary_counts_images_per_label_and_split(prepared):
    table = summary(prepared["radimagenet"][0])
    row = table[table["label"] == "CT/lung/nodule"].iloc[0]
    assert (row["dataset"], row["modality"], row["train"], row["val"], row["test"], row["total"]) == (
        "radiology_ai", "CT", 1, 1, 1, 3,
    )  # fmt: skip
    assert table["total"].sum() == len(prepared["radimagenet"][0])


def test_cli_prepare_combine_summary(tmp_path, capsys):
    raw = make_radimagenet(tmp_path / "radiology_ai", skip_images={"radiology_ai/US/aorta/aorta000001.png"})
    assert main(["prepare", "radimagenet", str(raw), str(tmp_path / "r.csv"), "--keep-missing"]) == 0
    out = capsys.readouterr()
    assert "missing_files=1" in out.out and "radiology_ai/US/aorta/aorta000001.png: missing" in out.err
    assert "radiology_ai/US/aorta/aorta000001.png" in (tmp_path / "r.csv").read_text()
    chest = make_chexpert(tmp_path / "CheXpert")
    assert (
        main(["prepare", "chexpert", str(chest), str(tmp_path / "c.csv"), "--seed", "3", "--no-check-files"])
        == 0
    )
    assert main(["combine", str(tmp_path / "all.csv"), str(tmp_path / "r.csv"), str(tmp_path / "c.csv")]) == 0
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "all.csv")]) == 0
    assert "US/aorta/normal" in capsys.readouterr().out


def test_bad_parameters_are_named(tmp_path):
    with pytest.raises(ValueError, match="parameter 'name'"):
        prepare("chexpert14", tmp_path, tmp_path / "x.csv")
    with pytest.raises(ValueError, match="parameter 'on_missing'"):
        prepare("nih14", tmp_path, tmp_path / "x.csv", on_missing="skip")
    with pytest.raises(FileNotFoundError, match="RAW_ROOT"):
        prepare("nih14", tmp_path / "nope", tmp_path / "x.csv")


def test_patient_split_is_seeded_and_order_independent():
    ids = pd.Series([f"p{i % 50}" for i in range(500)])
    a = patient_split(ids, seed=5)
    shuffled = ids.sample(frac=1.0, random_state=1)
    b = patient_split(shuffled, seed=5).reindex(ids.index)
    assert (a == b).all()
    per_patient = a.groupby(ids).nunique()
    assert (per_patient == 1).all() and ids[a == "val"].nunique() == 5
    assert not np.array_equal(a.to_numpy(), patient_split(ids, seed=6).to_numpy())
