"""benchmarks/bench_search.py runs on synthetic data and on a real embedding store (not timed here)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cbmir import store as cstore

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench_search  # noqa: E402

LABELS = ["CT/lung/normal", "CT/lung/lesion", "MR/brain/normal", "XR/chest/pneumonia"]


def write_store(tmp_path: Path, n: int = 240, missing: int = 7) -> tuple[Path, Path, pd.DataFrame]:
    """A manifest and a store whose vectors cluster by label; manifest row `missing` has no embedding."""
    rng = np.random.default_rng(3)
    chosen = rng.integers(0, len(LABELS), n)
    df = pd.DataFrame(
        {
            "filepath": [f"img{i:04d}.png" for i in range(n)],
            "dataset": "toy",
            "split": rng.choice(["train", "test"], size=n, p=[0.75, 0.25]),
            "modality": [LABELS[c].split("/")[0] for c in chosen],
            "anatomic_region": [LABELS[c].split("/")[1] for c in chosen],
        }
    )
    for i, lab in enumerate(LABELS):
        df[lab] = (chosen == i).astype(int)
    manifest = tmp_path / "toy.csv"
    df.to_csv(manifest, index=False)
    centres = rng.normal(size=(len(LABELS), 32))
    emb = (centres[chosen] + 0.3 * rng.normal(size=(n, 32))).astype(np.float32)
    keep = np.arange(n) != missing
    store = tmp_path / "store"
    failed = pd.DataFrame({"filepath": df["filepath"][~keep], "error": "corrupt"})
    cstore.write_store(store, emb[keep], df["filepath"][keep], spec="toy", failed=failed)
    return store, manifest, df.assign(code=chosen)


def test_load_store_takes_the_splits_and_skips_rows_without_embeddings(tmp_path):
    store, manifest, df = write_store(tmp_path)
    xb, lb, xq, lq = bench_search.load_store([str(store)], str(manifest))
    train = df[(df["split"] == "train") & (df.index != 7)]
    test = df[(df["split"] == "test") & (df.index != 7)]
    assert (len(xb), len(xq)) == (len(train), len(test))
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1, atol=1e-6)
    # class codes are consistent between the two splits: same code <=> same label
    codes = pd.Series(np.concatenate([lb, lq]), index=pd.concat([train, test])["code"].to_numpy())
    assert codes.groupby(level=0).nunique().eq(1).all() and codes.nunique() == len(LABELS)


def test_runs_on_a_store_and_ivf_probing_every_list_is_exact(tmp_path, capsys):
    store, manifest, _ = write_store(tmp_path)
    args = ["--store", str(store), "--manifest", str(manifest), "--only", "ivf", "--nprobe", "4"]
    assert bench_search.main([*args, "--no-append"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| ivf |"))
    assert "nlist=4, nprobe=4" in row and "| 1.0000 | +0.0000 | +0.0000 |" in row
    with pytest.raises(SystemExit):
        bench_search.main(["--store", str(store), "--no-append"])  # --manifest missing


def test_runs_on_small_synthetic_data(capsys):
    args = ["--n", "3000", "--queries", "300", "--only", "ivfpq", "--nprobe", "8", "--no-append"]
    assert bench_search.main(args) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| ivfpq |"))
    recall = float(row.split("|")[8])
    assert 0.5 < recall <= 1.0, row
