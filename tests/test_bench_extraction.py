"""benchmarks/bench_extraction.py: its GPU section's random-weight paper encoders and table, run on the CPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cbmir.models import presets

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench_extraction  # noqa: E402
from paper_architectures import PAPER_NINE, input_side, random_encoder  # noqa: E402

# parameters of each published vision tower + embedding head, in millions (model cards and papers)
PUBLISHED_MILLIONS = {
    "vit-b16-in21k": 85.8, "vit-mae-b": 85.8, "dinov2-b14": 86.6, "sam-vit-b": 89.7, "medsam-vit-b": 89.7,
    "biomedclip": 86.2, "medclip": 27.9, "resnet50": 25.6, "clip-vit-l14": 304.0,
}  # fmt: skip


def test_the_nine_are_the_papers_correct_presets():
    paper = {n for n, p in presets().items() if p.paper_model and p.behaviour == "correct"}
    assert set(PAPER_NINE) == paper == set(PUBLISHED_MILLIONS)


@pytest.mark.parametrize("name", PAPER_NINE)
def test_random_encoders_are_full_size_with_the_presets_width(name):
    enc = random_encoder(name, device="meta")  # shapes only: no memory, no initialisation
    n = sum(p.numel() for p in enc.module.parameters()) / 1e6
    assert n == pytest.approx(PUBLISHED_MILLIONS[name], rel=0.01)
    side = input_side(name)
    with torch.device("meta"):
        out = enc.module(torch.empty(2, 3, side, side))
    assert tuple(out.shape) == (2, presets()[name].dim) == (2, enc.dim)


@pytest.mark.slow
def test_random_encoder_is_seeded():
    a, b = random_encoder("resnet50", seed=3), random_encoder("resnet50", seed=3)
    for (ka, va), (kb, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(ValueError, match="no random-weight builder"):
        random_encoder("raw-pixels")


@pytest.mark.slow  # a full-size ResNet50 through PrecisionRunner's checked CPU rewrites
def test_gpu_rows_and_table_on_the_cpu():
    rows = bench_extraction.gpu_rows(
        ["resnet50"], [1, 2], ["fp32"], device="cpu", repeats=1, preset_batch=False
    )
    assert [(r["encoder"], r["batch"], r["precision"], r["input"]) for r in rows] == [
        ("resnet50", 1, "fp32", 224),
        ("resnet50", 2, "fp32", 224),
    ]
    assert all(np.isfinite(r["img_s"]) and r["img_s"] > 0 and r["peak_gib"] is None for r in rows)
    table = bench_extraction.gpu_table(
        rows + [{**rows[0], "batch": 512, "img_s": None, "peak_gib": "out of memory"}]
    )
    assert table[0].startswith("| encoder | input px | precision | batch | img/s | peak memory GiB |")
    assert len(table) == 2 + len(rows) + 1
    assert table[2].startswith("| resnet50 | 224 | fp32 | 1 | ") and table[2].endswith(" | n/a |")
    assert table[-1] == "| resnet50 | 224 | fp32 | 512 | n/a | out of memory |"


def test_gpu_section_is_skipped_with_a_line_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = bench_extraction.argparse.Namespace(
        gpu_models="resnet50", gpu_batches="1", gpu_precisions="fp32", gpu_repeats=1
    )
    assert bench_extraction.gpu_section(args) == []
    assert "GPU section skipped" in capsys.readouterr().out


def test_gemm_shapes_records_every_linear_call_and_rates_them():
    import bench_gemm_shapes

    block = torch.nn.Sequential(
        torch.nn.Linear(16, 48), torch.nn.GELU(), torch.nn.Linear(48, 16), torch.nn.Linear(16, 48)
    )
    shapes = bench_gemm_shapes.linear_shapes(block, torch.randn(2, 10, 16))  # 2 images x 10 tokens
    assert shapes == {(20, 16, 48): 2, (20, 48, 16): 1}
    assert bench_gemm_shapes.shape_rate(shapes, torch.float32, repeats=1) > 0


def test_bench_decode_measures_every_path_and_finds_them_equal(tmp_path):
    """bench_decode's four paths on a few written files: same tensors, a time for each; the nine's transforms."""
    import bench_decode
    from cbmir.models.transforms import Preprocess
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (50 + i, 40), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    paths = [f"{i}.jpg" for i in range(3)]
    row = bench_decode.measure(Preprocess({"resize": 24, "crop": 20}), tmp_path, paths, tmp_path / "c", 1)
    assert set(row) == {"rgb", "grey", "miss", "hit", "max_diff"} and row["max_diff"] == 0.0
    assert all(row[k] > 0 for k in ("rgb", "grey", "miss", "hit"))
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 3
    assert set(bench_decode.paper_transforms()) == set(PAPER_NINE)


def test_share_text_gives_median_and_range_in_percent():
    assert bench_extraction.share_text([0.95, 0.88, 0.91]) == "91 % (88-95 %, 3 rounds)"
    assert bench_extraction.share_text([]) == "-"


def test_pipeline_pairs_each_warm_round_with_its_own_bare_measurement(tmp_path):
    from cbmir.models import load_encoder

    if importlib.util.find_spec("pneumonia_model_package") is None:  # its images only: not imported
        pytest.skip("pneumonia-model-package is not installed")
    root = tmp_path / "images"
    root.mkdir()
    manifest = bench_extraction.write_images(root, 6)
    rates = iter([1000.0, 4000.0])
    asked = []

    def bare_rate() -> float:
        asked.append(next(rates))
        return asked[-1]

    whole, best_loop, best_steady, _, shares = bench_extraction.pipeline(
        load_encoder("raw-pixels"), manifest, root, tmp_path / "out", 2, False, "off", 0, rounds=2,
        bare_rate=bare_rate,
    )  # fmt: skip
    assert asked == [1000.0, 4000.0] and len(shares) == 2  # one bare measurement per warm round, in order
    steadies = [share * rate for share, rate in zip(shares, asked, strict=True)]
    assert best_steady == pytest.approx(max(steadies)) and whole > 0 and best_loop > 0
    with pytest.raises(ValueError, match="more than 4 images"):  # two batches of 2 leave no steady chunk
        bench_extraction.pipeline(
            load_encoder("raw-pixels"), manifest.iloc[:4], root, tmp_path / "out", 2, False, "off", 0
        )
    assert bench_extraction.pipeline(
        load_encoder("raw-pixels"), manifest, root, tmp_path / "out", 2, False, "off", 0, rounds=1
    )[4] == []  # fmt: skip
