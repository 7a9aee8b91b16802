"""benchmarks/rehearse_paper_scale.py: the paper's shape, the authors' layout, and the P@N check at a tiny scale."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rehearse_paper_scale as R  # noqa: E402


def test_class_sizes_have_the_papers_shape():
    sizes = R.class_sizes(1.0)
    assert len(sizes) == 161 and sizes.max() == 226_000 and sizes.min() == 13
    assert abs(sizes.sum() - 1_600_000) < 1_000


def test_paper_retrieval_matches_a_per_query_loop():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 4, 30)
    nb = rng.integers(0, 4, (30, 6))
    counts = np.array([2, 5, 9, 1])
    table = R.paper_retrieval(nb, q, counts, 5)
    for n in range(1, 6):
        p = [
            sum(nb[i, j] == q[i] for j in range(min(n, counts[q[i]]))) / min(n, counts[q[i]])
            for i in range(30)
        ]
        frame = pd.DataFrame({"p": p, "c": q})
        assert table["micro_precision_mean"][n - 1] == pytest.approx(np.mean(p), abs=1e-12)
        assert table["macro_precision_mean"][n - 1] == pytest.approx(
            frame.groupby("c")["p"].mean().mean(), abs=1e-12
        )


def test_tiny_rehearsal_imports_and_reproduces_their_precision(tmp_path):
    from cbmir.authors import import_authors

    shape = R.generate(tmp_path / "artefacts", 0.001, seed=0)
    assert shape["classes"] == 161 and set(shape["datasets"]) == {
        "nih14",
        "mimic",
        "radiology_ai",
        "CheXpert",
    }
    h5 = sorted(
        p.relative_to(tmp_path / "artefacts").as_posix() for p in (tmp_path / "artefacts").rglob("*.h5")
    )
    assert h5[0] == "embeddings/BiomedCLIPVitB16_224/CheXpert.h5" and len(h5) == 12
    report = import_authors(tmp_path / "artefacts", tmp_path / "work", progress=False)
    assert {e["rows"] for e in report.values()} == {shape["rows"]}
    check = R.check_precision(tmp_path)
    assert check["models"] == ["sam-vit-b", "biomedclip", "vit-b16-in21k"]  # a knn.csv for every model
    assert check["max |micro diff| P@1..99"] < 1e-9 and check["max |macro diff| P@1..99"] < 1e-9
    knn = tmp_path / "artefacts" / "experiments" / "chexpert_mimic_nih14_radimagenet" / "SAMViTB" / "knn.csv"
    before = knn.read_bytes()
    frame, _ = R.build_manifest(0.001, 0)
    R.write_knn(knn.parent, frame, 0, "SAMViTB")  # the `knn` stage: the same file again, without the HDF5
    assert knn.read_bytes() == before


def test_nine_models_are_the_authors_classes_at_their_dimensions():
    from cbmir.authors import MODEL_PRESETS

    dims = {m: d for m, d, _ in R.NINE_MODELS}
    assert set(dims) == set(MODEL_PRESETS) and R.NINE_MODELS[:3] == R.MODELS
    assert dims == {"ViTB16": 768, "ViTMAEB": 768, "DINOv2ViTB14": 768, "SAMViTB": 256, "MedSAMViTB": 256,
                    "BiomedCLIPVitB16_224": 512, "MedCLIP": 512, "ResNet50": 1000, "CLIPOpenAIViTL14": 768}  # fmt: skip


def test_drop_h5_writes_imports_and_deletes_one_model_at_a_time(tmp_path):
    """`--drop-h5` with generate and import: each model's HDF5 files are gone once it is imported, every store and
    neighbour table is there, the authors' P@N is reproduced, and each stage records its commit."""
    import json
    import subprocess

    script = Path(R.__file__)
    root = tmp_path / "r"
    run = subprocess.run(
        [sys.executable, str(script), "--scale", "0.001", "--drop-h5", "--stages", "generate,import,check",
         "--no-results", "--root", str(root)],
        capture_output=True, text=True, cwd=script.parents[1],
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    record = json.loads((root / "rehearsal.json").read_text())
    models = [m for m, _, _ in R.MODELS]
    names = ["generate tables", *[f"{step} {m}" for m in models for step in ("generate", "import")]]
    assert list(record["stages"]) == names  # interleaved: written, imported, deleted, then the next model
    assert all(r["rc"] == 0 and r["commit"] for r in record["stages"].values())
    assert not list((root / "artefacts").rglob("*.h5")) and not list((root / "artefacts").rglob("knn.csv"))
    assert record["precision check"]["models"] == ["sam-vit-b", "biomedclip", "vit-b16-in21k"]
    assert record["precision check"]["max |micro diff| P@1..99"] < 1e-9
    assert record["shape"]["rows"] > 0
    assert not [p for p in (root / "parked").rglob("*") if p.is_file()]  # every parked model moved back
