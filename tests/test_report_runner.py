"""The report runner and config loader: job naming, error recording, the website, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from cbmir.config import ConfigError, load_config, slug
from cbmir.report import plan_jobs, run_report


def write_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'config = "configs/x.yaml"\nquick = False\nout_root = None\nredo = False\nmodel = None'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def write_config(root: Path, notebooks: list[dict], models=("m-a", "open_clip:ViT@x")) -> Path:
    (root / "configs").mkdir(parents=True, exist_ok=True)
    cfg = {
        "name": "tiny",
        "manifest": "m.csv",
        "data_root": "data",
        "work_dir": "work/tiny",
        "notebooks_dir": "nbs",
        "models": list(models),
        "notebooks": notebooks,
        "quick": {"models": ["m-a"]},
    }
    path = root / "configs" / "tiny.yaml"
    path.write_text(json.dumps(cfg))  # JSON is valid YAML
    return path


def test_jobs_are_named_after_their_parameters(tmp_path):
    (tmp_path / "nbs").mkdir()
    for name in ("a", "b"):
        write_notebook(tmp_path / "nbs" / f"{name}.ipynb", "pass")
    cfg = load_config(write_config(tmp_path, [{"name": "a"}, {"name": "b", "per_model": True}]))
    jobs = plan_jobs(cfg)
    assert [j.output_name for j in jobs] == ["a", "b--m-a", "b--open_clip-ViT-x"]
    assert jobs[2].parameters["model"] == "open_clip:ViT@x"
    assert jobs[0].parameters["config"] == "configs/tiny.yaml"  # relative: no machine path in the outputs
    quick = load_config(cfg.path, quick=True)
    assert [j.output_name for j in plan_jobs(quick)] == ["a", "b--m-a"]


def test_a_failing_notebook_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nbs").mkdir()
    write_notebook(
        tmp_path / "nbs" / "ok1.ipynb", "from pathlib import Path\nPath('ran-ok1').write_text(str(model))"
    )
    write_notebook(tmp_path / "nbs" / "bad.ipynb", "raise RuntimeError('deliberate failure in bad')")
    write_notebook(tmp_path / "nbs" / "ok2.ipynb", "print('visible output')")
    cfg_path = write_config(tmp_path, [{"name": "ok1"}, {"name": "bad"}, {"name": "ok2"}], models=["m-a"])
    status = run_report(cfg_path)
    assert status == 1
    log = json.loads((tmp_path / "reports" / "tiny" / "run.json").read_text())
    assert {k: v["status"] for k, v in log.items()} == {"ok1": "ok", "bad": "failed", "ok2": "ok"}
    assert "deliberate failure in bad" in log["bad"]["error"]
    assert (tmp_path / "ran-ok1").read_text() == "None"  # ran in the project root with its parameters
    meta = nbformat.read(tmp_path / "reports" / "tiny" / "ok2.ipynb", as_version=4).metadata["papermill"]
    assert (meta["input_path"], meta["output_path"]) == ("nbs/ok2.ipynb", "reports/tiny/ok2.ipynb")
    page = (tmp_path / "reports" / "tiny" / "site" / "ok2.html").read_text()  # the website, not loose copies
    assert "visible output" in page and '<details class="cbmir-code">' in page  # output shown, code folded
    assert not (tmp_path / "reports" / "tiny" / "ok2.html").exists()


def test_config_errors_name_the_file_and_key(tmp_path):
    path = write_config(tmp_path, [{"name": "a"}])
    text = json.loads(path.read_text())
    del text["models"]
    path.write_text(json.dumps(text))
    with pytest.raises(ConfigError, match=r"tiny\.yaml: missing key\(s\) \['models'\]"):
        load_config(path)
    text.update(models=["x"], colour="red")
    path.write_text(json.dumps(text))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\]"):
        load_config(path)
    text.pop("colour")
    text["notebooks"] = [{"per_model": True}]
    path.write_text(json.dumps(text))
    with pytest.raises(ConfigError, match="needs a 'name'"):
        load_config(path)


def test_index_settings_are_checked_at_load_and_reach_the_search(tmp_path):
    from cbmir.pipeline import Context

    path = write_config(tmp_path, [{"name": "a"}])
    text = json.loads(path.read_text())
    text.update(index_type="ivfpq", index_params={"nprobe": 64, "k_factor": 8})
    path.write_text(json.dumps(text))
    cfg = load_config(path)
    settings = Context(cfg, manifest=None).search_settings
    assert settings == {"index_type": "ivfpq", "nprobe": 64, "k_factor": 8}
    for bad, message in (
        ({"index_type": "annoy"}, r"tiny\.yaml: parameter 'index_type' is 'annoy'"),
        (
            {"index_params": {"ef_search": 64}},
            r"tiny\.yaml: index_type 'ivfpq' has no parameter\(s\) \['ef_search'\]",
        ),
        ({"index_params": [64]}, r"tiny\.yaml: 'index_params' must map"),
    ):
        path.write_text(json.dumps({**text, **bad}))
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_paths_resolve_against_the_folder_holding_configs(tmp_path):
    cfg = load_config(write_config(tmp_path, [{"name": "a"}]), out_root=tmp_path / "out")
    assert cfg.manifest == (tmp_path / "m.csv").resolve()
    assert cfg.work_dir == (tmp_path / "out" / "work" / "tiny").resolve()
    assert cfg.reports_dir == (tmp_path / "out" / "reports" / "tiny").resolve()


def test_shipped_configs_load():
    for name in ("radmini", "paper"):
        cfg = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
        assert cfg.models and all((cfg.notebooks_dir / f"{n.name}.ipynb").exists() for n in cfg.notebooks)


def test_slug_is_file_name_safe():
    assert slug("open_clip:ViT-B-16@openai") == "open_clip-ViT-B-16-openai"
    assert slug("hf:microsoft/rad-dino") == "hf-microsoft-rad-dino"


def test_checkpoints_reach_the_extraction(tmp_path, monkeypatch):
    import cbmir.embeddings
    from cbmir.pipeline import Context

    path = write_config(tmp_path, [{"name": "a"}], models=["biomedclip"])
    text = json.loads(path.read_text())
    text["checkpoints"] = {"biomedclip": "weights/biomedclip"}
    path.write_text(json.dumps(text))
    cfg = load_config(path)
    assert cfg.checkpoints == {"biomedclip": (tmp_path / "weights" / "biomedclip").resolve()}
    seen = {}
    monkeypatch.setattr(cbmir.embeddings, "extract_embeddings", lambda *a, **kw: seen.update(kw))
    Context(cfg, manifest=None).embeddings("biomedclip")
    assert seen["checkpoint"] == cfg.checkpoints["biomedclip"]
    text["checkpoints"] = ["not", "a", "mapping"]
    path.write_text(json.dumps(text))
    with pytest.raises(ConfigError, match="'checkpoints' must map"):
        load_config(path)


def test_progress_bars_hide_when_asked_or_under_tqdm_disable(monkeypatch):
    from cbmir.progress import hide_progress

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert hide_progress(True) is False and hide_progress(False) is True
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert hide_progress(True) is True
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert hide_progress(True) is False
