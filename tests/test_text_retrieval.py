"""Text-to-image retrieval: prompts, per-class metrics against slow references, zero-shot classification,
an end-to-end text search on a tiny manifest through a tiny open_clip preset, `cbmir search --text`, and the
report's skip of the text notebook when a config has no image-text model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cbmir.analyses import text as text_study
from cbmir.text_retrieval import (
    DEFAULT_TEMPLATE,
    TemplateError,
    class_prompts,
    embed_prompts,
    label_fields,
    search_text,
    zero_shot_scores,
)
from PIL import Image
from text_assets import tiny_open_clip


def test_default_prompt_from_label_path():
    assert label_fields("XR/chest/Pleural_Effusion")["finding"] == "pleural effusion"
    prompts = class_prompts(["XR/chest/Pneumonia", "CT/abdomen/HCC"])
    assert prompts["XR/chest/Pneumonia"] == ["a X-ray image of the chest showing pneumonia"]
    assert prompts["CT/abdomen/HCC"] == ["a CT image of the abdomen showing HCC"]
    two = class_prompts(["MR/brain/normal"], [DEFAULT_TEMPLATE, "{label}"])
    assert two["MR/brain/normal"] == ["a MRI image of the brain showing normal", "MR/brain/normal"]
    with pytest.raises(TemplateError, match="unknown field"):
        class_prompts(["XR/chest/a"], "an image of {organ}")


# ---- slow references --------------------------------------------------------------------------------
def _slow_table(ids, query_classes, index_rows, labels, ns):
    rows = []
    index_labels = [labels[i] for i in index_rows]
    m = len(index_rows)
    for q, cls in enumerate(query_classes):
        n_c = index_labels.count(cls)
        ranked = [labels[i] == cls for i in ids[q]]
        row = {}
        for n in ns:
            used = min(n, n_c)
            row[f"P@{n}"] = sum(ranked[:used]) / used if used else np.nan
            row[f"chance P@{n}"] = n_c / m if n_c else np.nan
        r = min(n_c, len(ranked))
        total, hits = 0.0, 0
        for j in range(r):
            if ranked[j]:
                hits += 1
                total += hits / (j + 1)
        row["MAP@R"] = total / r if r else np.nan
        # chance MAP@R by brute force over every ordering is too slow; check it by simulation below
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_text_retrieval_table_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    classes = np.array(["XR/chest/a", "XR/chest/b", "CT/head/c", "CT/head/d"])
    labels = classes[rng.integers(0, 3, 60)]  # class d has no image: NaN row
    index_rows = np.flatnonzero(rng.random(60) < 0.7)
    ids = np.stack([rng.permutation(index_rows)[:12] for _ in classes])
    table = text_study.text_retrieval_table(ids, classes, index_rows, labels, None, ns=(1, 5, 10))
    slow = _slow_table(ids, classes, index_rows, list(labels), (1, 5, 10))
    for col in slow.columns:
        np.testing.assert_allclose(table[col].to_numpy(float), slow[col].to_numpy(float), equal_nan=True)
    assert table["n_index"].tolist() == [int((labels[index_rows] == c).sum()) for c in classes]


def test_chance_map_at_r_matches_simulation():
    rng = np.random.default_rng(0)
    labels = np.array(["a"] * 5 + ["b"] * 15)
    index_rows = np.arange(20)
    ids = np.stack([rng.permutation(20)[:10] for _ in range(4000)])  # 4000 random rankings, one query each
    table = text_study.text_retrieval_table(ids, ["a"] * len(ids), index_rows, labels, ns=(1,))
    assert table["chance MAP@R"].nunique() == 1
    assert abs(table["MAP@R"].mean() - table["chance MAP@R"][0]) < 0.01


def test_majority_baseline_matches_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 4, 50)
        base = text_study.majority_baseline(y, 5)
        pred = np.full_like(y, np.bincount(y).argmax())
        assert base["majority_accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert base["majority_f1_macro"] == pytest.approx(
            f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0)
        )
        assert base["chance_accuracy"] == pytest.approx(1 / 5)


def test_zero_shot_table_reports_cases_chance_and_majority():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    scores = rng.normal(size=(40, 3))
    scores[np.arange(40), y] += 1.0
    cases = np.repeat(np.arange(20), 2)
    table = text_study.zero_shot_table(scores, y, ["a", "b", "c"], cases, n_boot=50)
    acc = table.set_index("metric").loc["accuracy"]
    assert acc["value"] == pytest.approx((scores.argmax(1) == y).mean())
    assert acc["cases"] == 20 and acc["rows"] == 40 and acc["chance"] == pytest.approx(1 / 3)
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]


# ---- end to end on a tiny manifest ------------------------------------------------------------------
CLASSES = ["XR/chest/Pneumonia", "XR/chest/Normal", "MR/brain/Tumor"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from cbmir.models import load_encoder
    from cbmir.store import write_store

    tmp = tmp_path_factory.mktemp("text")
    folder = tiny_open_clip(tmp / "model")
    rng = np.random.default_rng(0)
    rows = []
    (tmp / "data").mkdir()
    for i in range(18):
        cls = CLASSES[i % 3]
        fp = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp / "data" / fp)
        modality, region, _ = cls.split("/")
        rows.append(
            {"filepath": fp, "dataset": "tiny", "split": "train" if i < 12 else "test", "modality": modality,
             "anatomic_region": region, "patient_id": f"p{i // 2}", **{c: int(c == cls) for c in CLASSES}}
        )  # fmt: skip
    manifest = pd.DataFrame(rows)
    manifest.to_csv(tmp / "manifest.csv", index=False)
    enc = load_encoder("biomedclip", checkpoint=folder)
    images = [Image.open(tmp / "data" / fp).convert("RGB") for fp in manifest["filepath"]]
    vectors = enc.embed_images(images).numpy()
    write_store(tmp / "store", vectors, manifest["filepath"].tolist(), spec="biomedclip")
    return tmp, folder, manifest, enc, vectors


def test_text_search_end_to_end(tiny_run):
    from cbmir.manifest import case_ids, row_labels

    tmp, folder, manifest, enc, vectors = tiny_run
    labels = row_labels(manifest, "label")
    index_rows = np.flatnonzero(manifest["split"] == "train")
    prompts = class_prompts(CLASSES)
    class_vectors = embed_prompts(enc, prompts)
    scores, pos = search_text(vectors[index_rows], class_vectors, 5)
    ids = index_rows[pos]
    # the same ranking by brute force: cosine of every index image to each class vector
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for c in range(3):
        sims = unit[index_rows] @ class_vectors[c]
        np.testing.assert_allclose(np.sort(sims)[::-1][:5], scores[c], atol=1e-5)
    table = text_study.text_retrieval_table(ids, CLASSES, index_rows, labels, case_ids(manifest), ns=(1, 5))
    assert table["n_index"].tolist() == [4, 4, 4] and table["chance P@5"].tolist() == pytest.approx(
        [1 / 3] * 3
    )
    summary = text_study.macro_summary(table, n_boot=50)
    test_rows = np.flatnonzero(manifest["split"] == "test")
    zs = zero_shot_scores(vectors[test_rows], class_vectors)
    y = np.searchsorted(np.array(CLASSES), labels[test_rows], sorter=np.argsort(CLASSES))
    y = np.argsort(CLASSES)[y]
    zero = text_study.zero_shot_table(zs, y, CLASSES, case_ids(manifest)[test_rows], n_boot=50)
    sentences = text_study.findings("tiny", summary, zero, n=5)
    assert len(sentences) == 2 and "cases" in sentences[1] and "classes" in sentences[0]


def test_cli_search_text(tiny_run, capsys):
    from cbmir.cli import main

    tmp, folder, *_ = tiny_run
    out = tmp / "ranked.csv"
    status = main([
        "search", "--text", "a chest x-ray showing pneumonia", "--store", str(tmp / "store"),
        "--manifest", str(tmp / "manifest.csv"), "--checkpoint", str(folder), "--k", "3", "--out", str(out),
    ])  # fmt: skip
    assert status == 0
    ranked = pd.read_csv(out)
    assert len(ranked) == 3 and set(ranked["filepath"]) <= {f"img{i}.png" for i in range(12)}
    assert "model biomedclip" in capsys.readouterr().out


def test_cli_search_text_with_image_only_model(tiny_run, capsys):
    from cbmir.cli import main

    tmp, *_ = tiny_run
    status = main([
        "search", "--text", "pneumonia", "--store", str(tmp / "store"), "--manifest", str(tmp / "manifest.csv"),
        "--model", "raw-pixels",
    ])  # fmt: skip
    assert status == 2
    assert "image-only" in capsys.readouterr().err


def test_report_skips_text_notebook_without_image_text_model(tmp_path):
    import yaml
    from cbmir.config import load_config
    from cbmir.report import plan_jobs
    from cbmir.site import plan_sections

    cfg_path = tmp_path / "configs" / "t.yaml"
    cfg_path.parent.mkdir()
    cfg = {
        "name": "t", "manifest": "m.csv", "data_root": "d", "work_dir": "w", "models": ["raw-pixels"],
        "notebooks": [{"name": "10_text_retrieval", "per_model": True, "models": "image-text"}],
        "notebooks_dir": str(__import__("cbmir.config").config.NOTEBOOKS_DIR),
    }  # fmt: skip
    cfg_path.write_text(yaml.safe_dump(cfg))
    jobs = plan_jobs(load_config(cfg_path))
    assert len(jobs) == 1 and "no model of this config has a text encoder" in jobs[0].skip
    page = plan_sections(load_config(cfg_path))[0].pages[0]
    assert page.status == "skipped" and "raw-pixels" in page.error
    cfg["models"] = ["raw-pixels", "biomedclip"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    jobs = plan_jobs(load_config(cfg_path))
    assert [j.parameters["model"] for j in jobs] == ["biomedclip"] and jobs[0].skip is None


def test_text_notebook_runs_for_an_image_text_model(tiny_run, tmp_path):
    """notebooks/10_text_retrieval.ipynb through the report runner on the tiny manifest and tiny open_clip."""
    import json

    import yaml
    from cbmir.report import run_report

    tmp, folder, *_ = tiny_run
    cfg_path = tmp_path / "configs" / "tiny.yaml"
    cfg_path.parent.mkdir()
    cfg = {
        "name": "tiny", "manifest": str(tmp / "manifest.csv"), "data_root": str(tmp / "data"), "work_dir": "work",
        "models": ["raw-pixels", "biomedclip"], "checkpoints": {"biomedclip": str(folder)}, "k": 4, "bootstrap": 20,
        "prompt_templates": ["a {modality} image of the {region} showing {finding}", "{finding}"],
        "notebooks": [{"name": "10_text_retrieval", "per_model": True, "models": "image-text"}],
        "notebooks_dir": str(__import__("cbmir.config").config.NOTEBOOKS_DIR),
    }  # fmt: skip
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert run_report(cfg_path, html=False) == 0
    log = json.loads((tmp_path / "reports" / "tiny" / "run.json").read_text())
    assert log["10_text_retrieval--biomedclip"]["status"] == "ok"
    tables = tmp_path / "reports" / "tiny" / "tables"
    assert (tables / "10_text_retrieval--biomedclip-per-class.csv").exists()
    assert (tmp_path / "figures" / "tiny" / "10_text_retrieval--biomedclip.png").exists()
