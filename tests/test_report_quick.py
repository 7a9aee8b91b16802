"""Every notebook of the report, run through the runner in quick mode on a small real RadMini build.

RadMini is built from the pip-package sources only (no Debian, npm or download), the baseline models are
used, and each executed notebook must have no error output and must have written its figures and tables.
The summary's numbers must equal what `cbmir.metrics` returns for the stored neighbour tables.
"""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd
import pytest
from cbmir import metrics
from cbmir.config import NOTEBOOKS_DIR, load_config
from cbmir.manifest import read_manifest, row_labels
from cbmir.search import Neighbours
from conftest import QUICK_MODELS

pytestmark = pytest.mark.slow
MODELS = QUICK_MODELS


@pytest.fixture
def quick_run(quick_report):
    """The session's quick report run (tests/conftest.py): built once per test run."""
    return quick_report


def test_every_notebook_ran_without_error(quick_run):
    root, status = quick_run
    log = json.loads((root / "out" / "reports" / "radmini" / "run.json").read_text())
    assert status == 0, {k: v["error"] for k, v in log.items() if v["status"] != "ok"}
    expected = {p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb")}
    ran = {k.split("--")[0] for k in log}
    assert ran == expected
    for name in log:
        if log[name]["status"] == "skipped":  # 10_text_retrieval: RadMini's models are image-only
            assert "text encoder" in log[name]["error"], log[name]
            continue
        nb = nbformat.read(root / "out" / "reports" / "radmini" / f"{name}.ipynb", as_version=4)
        errors = [
            o
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.get("outputs", [])
            if o.get("output_type") == "error"
        ]
        assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
        bars = [
            o["text"]
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and "%|" in o["text"]
        ]
        assert not bars, f"{name}: progress bar text in the rendered notebook: {bars[0][:60]!r}"
        assert (root / "out" / "reports" / "radmini" / "site" / f"{name}.html").stat().st_size > 0


def test_figures_and_tables_were_written(quick_run):
    root, _ = quick_run
    figures = root / "out" / "figures" / "radmini"
    tables = root / "out" / "reports" / "radmini" / "tables"
    for stem in (
        [
            "01_data-samples",
            "04_index_size",
            "05_embedding_space-purity",
            "06_anatomy_vs_pathology",
            "07_classification",
            "08_summary-curves",
        ]
        + [f"03_retrieval--{m}-curves" for m in MODELS]
        + [f"03_retrieval--{m}-gallery" for m in MODELS]
    ):
        for ext in (".png", ".svg"):
            assert (figures / f"{stem}{ext}").stat().st_size > 1000, f"{stem}{ext}"
    for name in [
        "01_data-by-label",
        "08_summary",
        "07_classification-knn",
        "07_classification-probe",
        "06_anatomy_vs_pathology-conditional",
        "05_embedding_space-scores",
        "04_index_size-curves",
        "08_summary-claims",
    ]:
        assert len(pd.read_csv(tables / f"{name}.csv")) > 0, name
    findings = (root / "out" / "reports" / "radmini" / "findings.md").read_text(encoding="utf-8")
    assert findings.startswith("# Findings (radmini)") and "## The paper's claims" in findings


def test_summary_numbers_equal_cbmir_metrics_on_the_stored_neighbours(quick_run):
    root, _ = quick_run
    summary = pd.read_csv(root / "out" / "reports" / "radmini" / "tables" / "08_summary.csv").set_index(
        ["model", "average", "N"]
    )["estimate"]
    from cbmir.pipeline import subsample_per_class

    cfg = load_config(root / "configs" / "radmini.yaml", quick=True)
    manifest = subsample_per_class(
        read_manifest(cfg.manifest), cfg.max_per_class, seed=cfg.seed
    )  # as the notebooks
    labels = row_labels(manifest, "label")
    for model in MODELS:
        nb = Neighbours.load(root / "out" / "work" / "radmini" / "neighbours" / f"{model}--test-in-train.npz")
        ref = metrics.retrieval_metrics(nb, labels, max_n=min(10, nb.k)).set_index("N")
        for n in (1, 3, 5, 10):
            if n <= nb.k:
                np.testing.assert_allclose(summary.loc[(model, "micro", n)], ref.loc[n, "micro"], atol=1e-12)
                np.testing.assert_allclose(summary.loc[(model, "macro", n)], ref.loc[n, "macro"], atol=1e-12)
