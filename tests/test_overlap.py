"""Training-data overlap: dataset names, the flag per model, the summary's marker and sentence, and the
exclusion of images a model's published training list names (a fake list here), with a slow reference for
the path matching."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from cbmir.analyses import summary
from cbmir.config import ConfigError, load_config
from cbmir.manifest import read_manifest
from cbmir.models import presets
from cbmir.models.overlap import (
    DATASETS,
    TrainingListError,
    benchmark_datasets,
    canonical_dataset,
    exclude_listed,
    match_training_images,
    overlap_sentence,
    overlap_table,
    pretraining_overlap,
    read_training_images,
)
from cbmir.pipeline import Context
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def manifest(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(filepath, dataset, split) rows with one label."""
    return pd.DataFrame(
        [
            {"filepath": f, "dataset": d, "split": s, "modality": "XR", "anatomic_region": "chest",
             "XR/chest/a": 1}
            for f, d, s in rows
        ]
    )  # fmt: skip


PAPER_LIKE = manifest(
    [
        ("ChestX-ray14/images/00000001_000.png", "nih14", "test"),
        ("mimic-cxr-jpg/files/p10/p10000032/s50414267/02aa804e.jpg", "mimic", "test"),
        ("CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg", "CheXpert", "test"),
        ("radiology_ai/CT/lung/normal/ct1.png", "radiology_ai", "train"),  # training split only
    ]
)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("nih14", "NIH ChestX-ray14"),
        ("NIH ChestX-ray14", "NIH ChestX-ray14"),
        ("chestx-ray14", "NIH ChestX-ray14"),
        ("mimic", "MIMIC-CXR"),
        ("MIMIC-CXR-JPG", "MIMIC-CXR"),
        ("CheXpert", "CheXpert"),
        ("radiology_ai", "RadImageNet"),
        ("RadImageNet", "RadImageNet"),
        ("pneumonia", "Kermany paediatric chest X-ray"),
        ("pydicom", "pydicom"),  # not a published dataset: kept as it is
    ],
)
def test_dataset_names_map_to_one_canonical_name(name, canonical):
    assert canonical_dataset(name) == canonical


def test_aliases_are_unique_across_datasets():
    from cbmir.models.overlap import _key

    seen: dict[str, str] = {}
    for name, aliases in DATASETS.items():
        for alias in (name, *aliases):
            assert seen.setdefault(_key(alias), name) == name, f"{alias!r} names two datasets"


def test_benchmark_datasets_are_those_of_the_test_split():
    assert benchmark_datasets(PAPER_LIKE) == ["CheXpert", "MIMIC-CXR", "NIH ChestX-ray14"]
    assert benchmark_datasets(PAPER_LIKE, split="train") == ["RadImageNet"]


# what each preset's recorded pretraining says about the paper-like test sets, written out by hand
EXPECTED = {
    "rad-dino": ("yes", ("MIMIC-CXR", "CheXpert", "NIH ChestX-ray14")),
    "medclip": ("yes", ("MIMIC-CXR", "CheXpert")),
    "biomedclip": ("no", ()),
    "dinov2-b14": ("no", ()),
    "dinov3-b16": ("no", ()),
    "dinov2-s14-imgfocus": ("unknown", ()),
    "raw-pixels": ("no", ()),
    "timm:resnet18": ("unknown", ()),  # a generic spec records nothing: unknown
}


@pytest.mark.parametrize("model", list(EXPECTED))
def test_overlap_flags_models_pretrained_on_the_test_sets(model):
    status, hits = EXPECTED[model]
    found = pretraining_overlap(model, benchmark_datasets(PAPER_LIKE))
    assert (found.status, found.overlapping) == (status, hits)


def test_overlap_matches_a_brute_force_reference_for_every_preset():
    """Reference: compare every pretraining name with every test-set name through the alias table."""
    tested = ["nih14", "mimic", "CheXpert", "radiology_ai", "pneumonia", "br35h"]

    def same(a: str, b: str) -> bool:
        norm = lambda s: "".join(ch for ch in s.lower() if ch.isalnum())  # noqa: E731
        for name, aliases in DATASETS.items():
            names = {norm(x) for x in (name, *aliases)}
            if norm(a) in names and norm(b) in names:
                return True
        return norm(a) == norm(b)

    for name, preset in presets().items():
        want = [d for d in preset.pretraining_data if any(same(d, t) for t in tested)]
        got = pretraining_overlap(name, tested)
        assert [canonical_dataset(d) for d in want] == list(got.overlapping), name
        assert (got.status == "yes") == bool(want)


def test_overlap_table_sentence_and_summary_marker():
    models = ["rad-dino", "medclip", "biomedclip", "dinov2-s14-imgfocus"]
    table = overlap_table(models, PAPER_LIKE)
    assert list(table["overlap"]) == ["yes", "yes", "no", "unknown"]
    assert table.loc[0, "overlapping"] == "MIMIC-CXR, CheXpert, NIH ChestX-ray14"
    sentence = overlap_sentence(table)
    assert sentence.startswith("Pretrained on images of this benchmark's test sets: rad-dino (MIMIC-CXR")
    assert "medclip (MIMIC-CXR, CheXpert)" in sentence and "Not known for dinov2-s14-imgfocus" in sentence
    display = pd.DataFrame({"rank": [1, 2, 3, 4], "model": models[::-1], "micro P@1": ["x"] * 4})
    marked = summary.with_overlap(display, table)
    assert list(marked.columns) == ["rank", "model", summary.OVERLAP_COLUMN, "micro P@1"]
    assert marked.set_index("model")[summary.OVERLAP_COLUMN].to_dict() == {
        "rad-dino": "yes: MIMIC-CXR, CheXpert, NIH ChestX-ray14",
        "medclip": "yes: MIMIC-CXR, CheXpert",
        "biomedclip": "none recorded",
        "dinov2-s14-imgfocus": "unknown",
    }
    with pytest.raises(ValueError, match="raw-pixels"):
        summary.with_overlap(pd.DataFrame({"model": ["raw-pixels"]}), table)


def test_radmini_offline_models_are_not_flagged():
    df = read_manifest(ROOT / "data_splits" / "radmini.csv")
    cfg = yaml.safe_load((ROOT / "configs" / "radmini.yaml").read_text())
    table = overlap_table(cfg["models"], df)
    assert "Kermany paediatric chest X-ray" in table.loc[0, "test_datasets"]
    assert set(table["overlap"]) <= {"no", "unknown"}
    assert overlap_sentence(table).startswith("No model's recorded pretraining data include")


# ---- published training-image lists ------------------------------------------------------------------------


def _reference_match(filepaths, entries):
    """Slow reference: row i matches when some entry, split into lower-case components with the extension of
    its last one dropped, equals the same number of trailing components of the row's path."""

    def parts(p):
        comps = [c for c in str(p).replace("\\", "/").lower().split("/") if c not in ("", ".")]
        comps[-1] = comps[-1].rsplit(".", 1)[0] if "." in comps[-1] else comps[-1]
        return comps

    out = []
    for fp in filepaths:
        fpp = parts(fp)
        out.append(
            any(len(parts(e)) <= len(fpp) and fpp[len(fpp) - len(parts(e)) :] == parts(e) for e in entries)
        )
    return np.array(out)


def test_matching_equals_the_slow_reference_on_random_paths():
    rng = np.random.default_rng(0)
    words = ["a", "b", "c", "p10", "S1", "img"]
    for _ in range(20):
        paths = [
            "/".join(rng.choice(words, rng.integers(1, 5))) + rng.choice([".png", ".jpg", ""])
            for _ in range(40)
        ]
        entries = []
        for p in rng.choice(paths, 6):
            comps = p.split("/")
            tail = "/".join(comps[-rng.integers(1, len(comps) + 1) :])
            entries.append(str(PurePosixPath(tail).with_suffix(rng.choice([".dcm", ".JPG", ""]))).upper())
        entries.append("nowhere/else.png")
        np.testing.assert_array_equal(match_training_images(paths, entries), _reference_match(paths, entries))


def test_matching_ignores_extensions_and_leading_folders():
    paths = list(PAPER_LIKE["filepath"])
    entries = [
        "files/p10/p10000032/s50414267/02aa804e.dcm",
        "00000001_000",
        "patient1/study1/view1_frontal.jpg",
    ]
    assert match_training_images(paths, entries).tolist() == [True, True, False, False]


def test_reading_lists_csv_txt_and_errors_name_the_file(tmp_path):
    csv = tmp_path / "training_images.csv"
    csv.write_text("dataset,image_path\nmimic,files/p10/a.dcm\nnih,00000001_000.png\n")
    assert read_training_images(csv) == ["files/p10/a.dcm", "00000001_000.png"]
    assert read_training_images(csv, column="dataset") == ["mimic", "nih"]
    txt = tmp_path / "list.txt"
    txt.write_text("# images\na/b.png\n\nc.png\n")
    assert read_training_images(txt) == ["a/b.png", "c.png"]
    two = tmp_path / "two.csv"
    two.write_text("x,y\n1,2\n")
    with pytest.raises(TrainingListError, match=r"two\.csv.*no path column.*\['x', 'y'\]"):
        read_training_images(two)
    with pytest.raises(TrainingListError, match=r"training_images\.csv: no column 'nope'"):
        read_training_images(csv, column="nope")
    with pytest.raises(TrainingListError, match=r"missing\.csv: no such file"):
        read_training_images(tmp_path / "missing.csv")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(TrainingListError, match=r"binary\.txt: unreadable"):
        read_training_images(binary)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(TrainingListError, match=r"empty\.txt: holds no image paths"):
        read_training_images(empty)


def test_exclusion_removes_listed_queries_for_every_model_and_counts_them(tmp_path):
    listed = tmp_path / "training_images.csv"
    listed.write_text(
        "path\nfiles/p10/p10000032/s50414267/02aa804e.dcm\nradiology_ai/CT/lung/normal/ct1.png\n"
    )
    models = ["rad-dino", "biomedclip"]
    exclusion = exclude_listed(PAPER_LIKE, {"rad-dino": (listed, None)}, models)
    assert exclusion.mask.tolist() == [False, True, False, True]  # the training row is matched, not a query
    assert exclusion.report.to_dict("records") == [
        {"model": "rad-dino", "list": str(listed), "entries": 2, "query_images_removed": 1}
    ]
    assert exclusion.report.attrs["query_images_removed"] == 1
    assert exclusion.keep(np.array([0, 1, 2])).tolist() == [0, 2]
    with pytest.raises(
        TrainingListError, match=r"'rad-dino' publishes its training images.*training_images\.csv"
    ):
        exclude_listed(PAPER_LIKE, {}, models)
    with pytest.raises(TrainingListError, match="gone.csv"):
        exclude_listed(PAPER_LIKE, {"rad-dino": (tmp_path / "gone.csv", None)}, models)


# ---- configuration and the notebook Context ------------------------------------------------------------------


def write_config(tmp_path: Path, extra: str, models: str = "[raw-pixels, rad-dino]") -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    path = tmp_path / "configs" / "x.yaml"
    path.write_text(
        f"name: x\nmanifest: m.csv\ndata_root: data\nwork_dir: work\nmodels: {models}\nnotebooks: [08_summary]\n"
        + extra
    )
    return path


def test_config_options_for_training_lists(tmp_path):
    cfg = load_config(
        write_config(
            tmp_path,
            "exclude_pretraining_images: true\npretraining_image_lists:\n  rad-dino: lists/training_images.csv\n",
        )
    )
    assert cfg.exclude_pretraining_images
    assert cfg.pretraining_image_lists["rad-dino"].path == tmp_path / "lists" / "training_images.csv"
    assert cfg.pretraining_image_lists["rad-dino"].column is None
    cfg = load_config(
        write_config(tmp_path, "pretraining_image_lists:\n  rad-dino: {path: /l.csv, column: image_path}\n")
    )
    assert (
        not cfg.exclude_pretraining_images and cfg.pretraining_image_lists["rad-dino"].column == "image_path"
    )
    with pytest.raises(
        ConfigError, match=r"x\.yaml: exclude_pretraining_images: true needs pretraining_image_lists"
    ):
        load_config(write_config(tmp_path, "exclude_pretraining_images: true\n"))
    with pytest.raises(ConfigError, match=r"x\.yaml: pretraining_image_lists: 'rad_dino' not in models"):
        load_config(write_config(tmp_path, "pretraining_image_lists: {rad_dino: l.csv}\n"))
    with pytest.raises(ConfigError, match=r"pretraining_image_lists\.rad-dino\.colum"):
        load_config(write_config(tmp_path, "pretraining_image_lists: {rad-dino: {path: l.csv, colum: c}}\n"))


def test_context_drops_listed_images_from_the_queries(tmp_path):
    """A tiny run with the real raw-pixels encoder: the listed test images are never queries."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "ds").mkdir(parents=True)
    rows = []
    for i in range(16):
        name = f"ds/img_{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name)
        label = ["XR/chest/a", "XR/chest/b"][i % 2]
        rows.append({"filepath": name, "dataset": "toy", "split": "test" if i % 4 == 3 else "train",
                     "modality": "XR", "anatomic_region": "chest",
                     "XR/chest/a": int(label == "XR/chest/a"), "XR/chest/b": int(label == "XR/chest/b")})  # fmt: skip
    listed = tmp_path / "list.txt"
    listed.write_text("img_03.jpg\nds/img_11\nimg_04.png\n")  # two test images, one training image
    model = "raw-pixels:4"
    cfg = SimpleNamespace(
        work_dir=tmp_path / "work", data_root=root, batch_size_for=lambda m: 8, bf16=False, checkpoints={}, k=3,
        index_type="flat", index_params={}, neighbours="search", thumbs_root=None, precision=None, workers=0, models=[model], engine="local", ray_address=None, compile="auto", decode_cache=None,
        exclude_pretraining_images=True, pretraining_image_lists={model: SimpleNamespace(path=listed, column=None)},
    )  # fmt: skip
    ctx = Context(cfg, pd.DataFrame(rows))
    nb = ctx.neighbours(model)
    assert nb.query_rows.tolist() == [7, 15]  # 3 and 11 removed
    assert 4 in nb.index_rows.tolist()  # the index keeps its images
    assert ctx.pretraining_exclusion.report["query_images_removed"].tolist() == [2]
    cfg.exclude_pretraining_images = False
    assert Context(cfg, pd.DataFrame(rows)).neighbours(model).query_rows.tolist() == [3, 7, 11, 15]


def test_every_preset_states_its_pretraining_data_explicitly():
    """No preset relies on the default: each entry of presets.yaml says what it was trained on (or unknown)."""
    table = yaml.safe_load((ROOT / "lib/cbmir/models/presets.yaml").read_text())
    missing = [name for name, fields in table.items() if "pretraining_data" not in fields]
    assert not missing, f"presets.yaml: no pretraining_data for {missing}"
    for name, preset in presets().items():
        trained = preset.family.name not in {"raw_pixels", "random_vit"}
        assert bool(preset.pretraining_data) == trained, name
    assert presets()["rad-dino"].training_images.startswith("training_images.csv")
