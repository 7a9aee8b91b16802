"""Every shipped config in configs/ validates, names notebooks that exist and models the registry knows; the
extended paper config is the paper's setup with more models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cbmir.config import load_config
from cbmir.models import PresetError, presets, resolve_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("quick", [False, True])
def test_config_validates_and_names_existing_notebooks(path, quick):
    cfg = load_config(path, quick=quick)
    assert cfg.path == path and cfg.models
    for entry in cfg.notebooks:
        assert (cfg.notebooks_dir / f"{entry.name}.ipynb").exists(), f"{path.name}: notebook {entry.name}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_models_are_known_specs(path):
    cfg = load_config(path)
    unknown = []
    for spec in cfg.models:
        try:
            resolve_spec(spec)
        except PresetError:
            unknown.append(spec)
    assert not unknown, f"{path.name}: unknown model specs {unknown}"


def test_paper_config_runs_exactly_the_papers_nine_models():
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    paper = {p.paper_model for p in presets().values() if p.paper_model}
    assert len(cfg.models) == 9 and {resolve_spec(m).paper_model for m in cfg.models} == paper
    assert all(resolve_spec(m).behaviour == "correct" for m in cfg.models)


def test_only_the_configs_of_the_papers_data_are_flagged_as_its_setup():
    flagged = {p.stem for p in (ROOT / "configs").glob("*.yaml") if load_config(p).paper_setup}
    assert flagged == {"paper", "paper-extended", "paper-published"}


def test_extended_config_is_the_papers_setup_with_more_models():
    paper = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    extended = yaml.safe_load((ROOT / "configs" / "paper-extended.yaml").read_text())
    changed = {k for k in paper.keys() | extended.keys() if paper.get(k) != extended.get(k)}
    assert changed == {"name", "description", "work_dir", "models"}
    assert extended["models"][: len(paper["models"])] == paper["models"]
    new = extended["models"][len(paper["models"]) :]
    assert {"rad-dino", "dinov3-b16", "dinov2-l14"} <= set(new) and len(new) == len(set(new))


def test_decode_cache_is_off_by_default_and_resolved_against_the_project_root():
    path = ROOT / "configs" / "radmini.yaml"
    assert load_config(path).decode_cache is None
    assert load_config(path, decode_cache="work/decoded").decode_cache == ROOT / "work" / "decoded"
