"""cbmir.analyses.data: counting tables and the leakage audit against loops and synthetic images."""

import numpy as np
import pandas as pd
import pytest
from cbmir.analyses import data
from cbmir.manifest import case_ids
from PIL import Image, ImageEnhance, ImageFilter


def _manifest(patients):
    splits = ["train", "train", "val", "test", "test", "train", "test", "val"]
    labels = [
        "XR/chest/a",
        "XR/chest/b",
        "XR/chest/a",
        "CT/lung/c",
        "XR/chest/a",
        "CT/lung/c",
        "XR/chest/b",
        "CT/lung/c",
    ]
    df = pd.DataFrame(
        {
            "filepath": [f"img{i}.png" for i in range(8)],
            "dataset": ["d1"] * 6 + ["d2"] * 2,
            "split": splits,
            "modality": [lab.split("/")[0] for lab in labels],
            "anatomic_region": [lab.split("/")[1] for lab in labels],
        }
    )
    for name in sorted(set(labels)):
        df[name] = [int(lab == name) for lab in labels]
    if patients is not None:
        df["patient_id"] = patients
    return df


PATIENTS = [
    "p1",
    "p1",
    "p2",
    "p1",
    "",
    None,
    "p1",
    "p3",
]  # p1 of d1 spans train and test; "p1" of d2 is another


def test_case_ids_per_dataset_and_rows_without_patient():
    cases = case_ids(_manifest(PATIENTS))
    assert cases[0] == cases[1] == cases[3]  # d1 p1
    assert cases[6] != cases[0]  # d2 p1 is a different patient
    assert len({cases[4], cases[5]} | set(cases[[0, 2, 6, 7]])) == 6  # empty / missing ids: own cases
    assert np.array_equal(case_ids(_manifest(None)), np.arange(8))


def test_count_table_matches_a_loop_long_and_wide():
    df = _manifest(PATIENTS)
    cases = case_ids(df)
    labels = [c for c in df.columns if "/" in c]
    lab = np.array([labels[int(np.argmax(r))] for r in df[labels].to_numpy()])
    long = data.count_table(df, ["dataset", "label"])
    for row in long.itertuples():
        rows = [i for i in range(8) if df["dataset"][i] == row.dataset and lab[i] == row.label]
        assert row.images == len(rows) and row.cases == len({cases[i] for i in rows})
    assert long["images"].sum() == 8
    wide = data.count_table(df, "label", columns="split")
    assert list(wide.columns) == ["label", *(f"{s} {w}" for s in ("train", "val", "test") for w in ("images", "cases")),
                                  "total images", "total cases"]  # fmt: skip
    for row in wide.to_dict("records"):
        for split in ("train", "val", "test"):
            rows = [i for i in range(8) if lab[i] == row["label"] and df["split"][i] == split]
            assert row[f"{split} images"] == len(rows) and row[f"{split} cases"] == len(
                {cases[i] for i in rows}
            )
        rows = [i for i in range(8) if lab[i] == row["label"]]
        assert row["total cases"] == len({cases[i] for i in rows})  # a case in two splits counts once
    region = data.count_table(df, "region", columns="split")
    assert set(region["region"]) == {"XR/chest", "CT/lung"}
    with pytest.raises(data.DataAnalysisError, match="'scanner'"):
        data.count_table(df, "scanner")


def test_shared_cases_lists_patients_in_two_splits():
    shared = data.shared_cases(_manifest(PATIENTS))
    assert shared.to_dict("records") == [
        {"dataset": "d1", "patient_id": "p1", "splits": "train, test", "images": "train 2, test 1"}
    ]
    assert data.shared_cases(_manifest(None)).empty


def test_near_duplicate_pairs_match_a_popcount_loop():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (30, 8), dtype=np.uint8)
    hashes[5] = hashes[20] ^ np.array([1, 0, 0, 0, 0, 0, 0, 3], np.uint8)  # 3 bits apart
    splits = rng.choice(["train", "val", "test"], 30)
    splits[5], splits[20] = "train", "test"
    cases = rng.integers(0, 10, 30)
    got = data.near_duplicate_pairs(hashes, splits, cases, max_distance=24)
    ref = []
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        for i in range(30):
            for j in range(30):
                if splits[i] == a and splits[j] == b:
                    d = sum(
                        bin(int(u) ^ int(v)).count("1") for u, v in zip(hashes[i], hashes[j], strict=True)
                    )
                    if d <= 24:
                        ref.append((i, j, a, b, d, bool(cases[i] == cases[j])))
    assert sorted(map(tuple, got.itertuples(index=False))) == sorted(ref)
    assert (5, 20, "train", "test", 3, bool(cases[5] == cases[20])) in ref


def _picture(seed, size=96):
    """A smooth random grey image (blurred noise), standing in for an unrelated radiograph."""
    noise = np.random.default_rng(seed).integers(0, 256, (size // 8, size // 8), dtype=np.uint8)
    return (
        Image.fromarray(noise)
        .resize((size, size), Image.BICUBIC)
        .filter(ImageFilter.GaussianBlur(2))
        .convert("RGB")
    )


def test_leakage_audit_finds_copies_and_altered_copies_not_unrelated_images(tmp_path):
    base = [_picture(s) for s in range(6)]
    images = {
        "train/a.png": base[0],
        "train/b.png": base[1],
        "train/c.png": base[2],
        "test/a_copy.png": base[0],  # exact duplicate of a training image
        "test/b_brighter.png": ImageEnhance.Brightness(base[1]).enhance(1.08),  # slightly altered copy
        "test/d.png": base[3],  # unrelated
        "val/e.png": base[4],
        "val/c_small.png": base[2].resize((48, 48)),  # a resized copy in val
        "test/f.png": base[5],
    }
    for name, im in images.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        im.save(tmp_path / name)
    manifest = pd.DataFrame(
        {
            "filepath": list(images),
            "dataset": "toy",
            "split": [name.split("/")[0] for name in images],
            "modality": "XR",
            "anatomic_region": "chest",
            "XR/chest/x": 1,
            "patient_id": [f"p{i}" for i in range(len(images))],
        }
    )
    audit = data.leakage_audit(manifest, tmp_path, progress=False)
    found = {(r.filepath_a, r.filepath_b) for r in audit.near_duplicates.itertuples()}
    assert found == {("train/a.png", "test/a_copy.png"), ("train/b.png", "test/b_brighter.png"),
                     ("train/c.png", "val/c_small.png")}  # fmt: skip
    exact = audit.near_duplicates[audit.near_duplicates["filepath_b"] == "test/a_copy.png"]
    assert exact["distance"].item() == 0 and not exact["same_case"].item()
    # unrelated pictures are far apart: the threshold separates them with room to spare
    h = data.image_hashes([tmp_path / n for n in images], progress=False)
    unrelated = [np.unpackbits(h[i] ^ h[j]).sum() for i in range(3) for j in (5, 6, 8)]
    assert min(unrelated) > 2 * data.NEAR_DUPLICATE_MAX_DISTANCE
    summary = audit.summary.set_index("split pair")["count"]
    assert summary["train-test"] == 2 and summary["train-val"] == 1 and summary["val-test"] == 0
    assert summary["any"] == 0
    with pytest.raises(data.DataAnalysisError, match="hashes"):
        data.leakage_audit(manifest, hashes=h[:-1])


def test_leakage_audit_without_images_checks_patients_only():
    m = pd.DataFrame({"filepath": ["a.png", "b.png", "c.png"], "dataset": "toy", "split": ["train", "test", "val"],
                      "modality": "CT", "anatomic_region": "lung", "patient_id": ["p1", "p1", "p2"],
                      "CT/lung/x": 1})  # fmt: skip
    audit = data.leakage_audit(m, "/nonexistent", check_images=False)
    assert audit.summary.to_dict("records") == [
        {"check": "patients in more than one split", "split pair": "any", "count": 1}
    ]
    assert audit.near_duplicates.empty


def test_leakage_audit_without_patient_ids_says_its_patient_check_cannot_find_any():
    m = pd.DataFrame({"filepath": ["a.png", "b.png"], "dataset": "toy", "split": ["train", "test"],
                      "modality": "CT", "anatomic_region": "lung", "CT/lung/x": 1})  # fmt: skip
    (row,) = data.leakage_audit(m, "/nonexistent", check_images=False).summary.to_dict("records")
    assert row["count"] == 0 and "no patient_id column: each image is its own case" in row["check"]


def test_card_sections_quote_the_caveat_sections_of_a_data_card(tmp_path):
    card = tmp_path / "README.md"
    card.write_text(
        "# Toy\n\nintro\n\n## Sources\n\nnot a caveat\n\n## Near-duplicates\n\nphash groups.\n\nSome leakage may "
        "remain.\n\n## Shortcuts a reader should know\n\n- `MR/brain/x`: only from `a`.\n\n## Report subset\n\nno\n"
    )
    text = data.card_sections(card)
    assert text == (
        "### Near-duplicates\n\nphash groups.\n\nSome leakage may remain.\n\n"
        "### Shortcuts a reader should know\n\n- `MR/brain/x`: only from `a`.\n"
    )
    assert "not a caveat" not in text and "Report subset" not in text
    assert data.card_sections(card, ["Sources"]) == "### Sources\n\nnot a caveat\n"
    with pytest.raises(data.CbmirError, match=r"README\.md: none of the sections \['Missing'\]"):
        data.card_sections(card, ["Missing"])
    with pytest.raises(data.CbmirError, match=r"nope\.md: no such file \(config key 'data_card'\)"):
        data.card_sections(tmp_path / "nope.md")


def test_radmini_config_points_at_its_data_card_and_it_holds_the_caveats():
    from pathlib import Path

    from cbmir.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "radmini.yaml")
    assert cfg.data_card == root / "data_splits" / "README.md"
    text = data.card_sections(cfg.data_card)
    assert text.startswith("### Near-duplicates") and "### Shortcuts a reader should know" in text
