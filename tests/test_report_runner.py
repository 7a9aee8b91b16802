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


@pytest.mark.slow
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
    for change, message in (
        ({"models": None}, r"tiny\.yaml: models: missing key$"),
        ({"colour": "red"}, r"tiny\.yaml: colour: unknown key \(known keys: .*index_type"),
        ({"index_tpye": "flat"}, r"tiny\.yaml: index_tpye: unknown key \(did you mean 'index_type'\?\)$"),
        ({"notebooks": [{"per_model": True}]}, r"tiny\.yaml: notebooks\[0\]\.name: missing key"),
        ({"notebooks": ["a", {"name": "b", "per_modle": True}]}, r"notebooks\[1\]\.per_modle: unknown key"),
        ({"k": "100"}, r"tiny\.yaml: k: must be an integer \(got '100'\)"),
        ({"k": 0}, r"tiny\.yaml: k: must be >= 1 \(got 0\)"),
        ({"bf16": "yes"}, r"tiny\.yaml: bf16: must be true or false \(got 'yes'\)"),
        ({"models": []}, r"tiny\.yaml: models: must not be empty"),
        ({"name": "a b"}, r"tiny\.yaml: name: must be letters, digits"),
        ({"root": "/"}, r"tiny\.yaml: root: set by the loader"),
        ({"quick": {"max_per_clas": 3}}, r"tiny\.yaml: quick\.max_per_clas: unknown key \(did you mean"),
        ({"quick": [1]}, r"tiny\.yaml: quick: must be a mapping"),
    ):
        changed = {**text, **change}
        changed = {k: v for k, v in changed.items() if v is not None}
        path.write_text(json.dumps(changed))
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    path.write_text(json.dumps({**text, "k": 0, "colour": "red"}))
    with pytest.raises(ConfigError, match="colour: unknown key"):  # unknown keys are reported first
        load_config(path)


def test_keys_without_a_value_take_their_empty_default(tmp_path):
    path = write_config(tmp_path, [{"name": "a"}])
    text = json.loads(path.read_text())
    path.write_text(json.dumps({**text, "checkpoints": None, "index_params": None, "description": None}))
    cfg = load_config(path)
    assert (cfg.checkpoints, cfg.index_params, cfg.description) == ({}, {}, "")


def test_config_file_that_is_not_a_yaml_mapping(tmp_path):
    path = write_config(tmp_path, [{"name": "a"}])
    for content, message in (
        (b"\xff\xfe n\x00a\x00", r"tiny\.yaml: not UTF-8 text .*expected a YAML config"),
        (b"name: [unclosed", r"tiny\.yaml: not valid YAML"),
        (b"- a\n- b\n", r"tiny\.yaml: expected a mapping of keys at the top level \(got list\)"),
    ):
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=message):
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
        ({"index_params": [64]}, r"tiny\.yaml: index_params: must be a mapping \(got \[64\]\)"),
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
    import cbmir.extract
    from cbmir.pipeline import Context

    path = write_config(tmp_path, [{"name": "a"}], models=["biomedclip"])
    text = json.loads(path.read_text())
    text["checkpoints"] = {"biomedclip": "weights/biomedclip"}
    path.write_text(json.dumps(text))
    cfg = load_config(path)
    assert cfg.checkpoints == {"biomedclip": (tmp_path / "weights" / "biomedclip").resolve()}
    seen = {}
    monkeypatch.setattr(cbmir.extract, "extract_embeddings", lambda *a, **kw: seen.update(kw))
    Context(cfg, manifest=None).embeddings("biomedclip")
    assert seen["checkpoint"] == cfg.checkpoints["biomedclip"]
    text["checkpoints"] = ["not", "a", "mapping"]
    path.write_text(json.dumps(text))
    with pytest.raises(ConfigError, match="checkpoints: must be a mapping"):
        load_config(path)


def test_progress_bars_hide_when_asked_or_under_tqdm_disable(monkeypatch):
    from cbmir.progress import hide_progress

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert hide_progress(True) is False and hide_progress(False) is True
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert hide_progress(True) is True
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert hide_progress(True) is False


def test_unwritable_output_folder_is_reported_before_any_notebook_runs(tmp_path, monkeypatch, capsys):
    from cbmir.cli import main
    from cbmir.report import OutputFolderError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nbs").mkdir()
    write_notebook(tmp_path / "nbs" / "a.ipynb", "from pathlib import Path\nPath('ran-a').touch()")
    cfg_path = write_config(tmp_path, [{"name": "a"}], models=["m-a"])
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    with pytest.raises(
        OutputFolderError, match=r"blocked/reports/tiny: the reports folder cannot be written"
    ):
        run_report(cfg_path, out_root=tmp_path / "blocked")
    assert main(["report", "--config", str(cfg_path), "--out-root", str(tmp_path / "blocked")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbmir: error: ") and "cannot be written" in err and err.count("\n") == 1
    (tmp_path / "work").write_text("work_dir's parent is a file")
    with pytest.raises(OutputFolderError, match=r"work/tiny: the work folder cannot be written"):
        run_report(cfg_path)
    assert not (tmp_path / "ran-a").exists()


def test_only_names_unknown_notebooks(tmp_path):
    (tmp_path / "nbs").mkdir()
    write_notebook(tmp_path / "nbs" / "a.ipynb", "pass")
    cfg = load_config(write_config(tmp_path, [{"name": "a"}]))
    with pytest.raises(ValueError, match=r"parameter 'only': tiny\.yaml has no notebook\(s\) \['b'\]"):
        plan_jobs(cfg, only=["a", "b"])


SLOW_BODY = """
import os, time
from pathlib import Path
with open("runs-slow", "a") as fh:
    fh.write("x")
if not Path("go").exists():
    Path("slow-started").write_text(str(os.getpid()))
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_run_reuses_finished_jobs_and_reruns_the_interrupted_one(tmp_path, monkeypatch):
    """SIGKILL the runner in the middle of a notebook: nothing half-done is recorded or left in place."""
    import os
    import signal
    import subprocess
    import sys
    import time

    monkeypatch.chdir(tmp_path)
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    for name in ("first", "last"):
        write_notebook(nbs / f"{name}.ipynb", f"with open('runs-{name}', 'a') as fh:\n    fh.write('x')")
    write_notebook(nbs / "slow.ipynb", SLOW_BODY)
    cfg_path = write_config(tmp_path, [{"name": "first"}, {"name": "slow"}, {"name": "last"}], models=["m-a"])
    reports = tmp_path / "reports" / "tiny"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "lib")}
    runner = subprocess.Popen(
        [sys.executable, "-m", "cbmir", "report", "--config", str(cfg_path)],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    started = tmp_path / "slow-started"
    deadline = time.monotonic() + 300
    while not (started.exists() and started.read_text()) and runner.poll() is None:
        assert time.monotonic() < deadline, "the slow notebook never started"
        time.sleep(0.2)
    assert runner.poll() is None, runner.stderr.read().decode()[-2000:]
    log = json.loads((reports / "run.json").read_text())
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    os.kill(int(started.read_text()), signal.SIGKILL)  # the kernel runs in its own session
    runner.stderr.close()

    assert {k: v["status"] for k, v in log.items()} == {"first": "ok", "slow": "running"}
    assert json.loads((reports / "run.json").read_text()) == log  # nothing recorded as done after the kill
    assert (reports / "first.ipynb").is_file()  # the website is built at the end of a run, not per notebook
    assert not (reports / "slow.ipynb").exists() and not (reports / "site").exists()
    assert (tmp_path / "work" / "tiny" / "report-in-progress.json").is_file()

    (tmp_path / "go").touch()
    assert run_report(cfg_path) == 0
    runs = {name: (tmp_path / f"runs-{name}").read_text() for name in ("first", "slow", "last")}
    assert runs == {"first": "x", "slow": "xx", "last": "x"}  # first reused, slow re-run, last run once
    log = json.loads((reports / "run.json").read_text())
    assert {k: v["status"] for k, v in log.items()} == {"first": "ok", "slow": "ok", "last": "ok"}
    assert not (tmp_path / "work" / "tiny" / "report-in-progress.json").exists()
    assert not (reports / ".partial").exists()
    meta = nbformat.read(reports / "slow.ipynb", as_version=4).metadata["papermill"]
    assert meta["output_path"] == "reports/tiny/slow.ipynb"

    assert run_report(cfg_path) == 0  # the last run finished: a new run runs every job again
    assert (tmp_path / "runs-first").read_text() == "xx"


def test_batch_sizes_per_model_reach_the_extraction(tmp_path, monkeypatch):
    import cbmir.extract
    from cbmir.pipeline import Context

    path = write_config(tmp_path, [{"name": "a"}], models=["sam-vit-b", "biomedclip", "resnet50"])
    text = json.loads(path.read_text())
    text["batch_sizes"] = {"sam-vit-b": 4}
    path.write_text(json.dumps(text))
    seen = {}
    monkeypatch.setattr(cbmir.extract, "extract_embeddings", lambda *a, **kw: seen.update({a[2]: kw}))
    context = Context(load_config(path), manifest=None)
    for model in ("sam-vit-b", "biomedclip"):
        context.embeddings(model)
    assert seen["sam-vit-b"]["batch_size"] == 4
    assert seen["biomedclip"]["batch_size"] is None  # the preset's own, chosen by cbmir.extract
    path.write_text(json.dumps({**text, "batch_size": 16}))
    context = Context(load_config(path), manifest=None)
    for model in ("sam-vit-b", "resnet50"):
        context.embeddings(model)
    assert seen["sam-vit-b"]["batch_size"] == 4 and seen["resnet50"]["batch_size"] == 16
    for bad, message in (
        ({"batch_sizes": {"sam-vit-h": 4}}, r"tiny\.yaml: batch_sizes: 'sam-vit-h' not in models"),
        ({"batch_sizes": {"sam-vit-b": 0}}, r"tiny\.yaml: batch_sizes\.sam-vit-b"),
    ):
        path.write_text(json.dumps({**text, **bad}))
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_precision_and_workers_reach_the_extraction(tmp_path, monkeypatch):
    import cbmir.extract
    from cbmir.pipeline import Context

    path = write_config(tmp_path, [{"name": "a"}], models=["biomedclip"])
    text = json.loads(path.read_text())
    path.write_text(json.dumps({**text, "precision": "fp16", "workers": 6}))
    seen = {}
    monkeypatch.setattr(cbmir.extract, "extract_embeddings", lambda *a, **kw: seen.update(kw))
    Context(load_config(path), manifest=None).embeddings("biomedclip")
    assert seen["precision"] == "fp16" and seen["num_workers"] == 6
    for bad, message in (
        ({"precision": "fp8"}, r"tiny\.yaml: precision"),
        ({"workers": -1}, r"tiny\.yaml: workers"),
    ):
        path.write_text(json.dumps({**text, **bad}))
        with pytest.raises(ConfigError, match=message):
            load_config(path)


@pytest.mark.slow
def test_stale_figures_and_tables_of_earlier_runs_are_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nbs").mkdir()
    writer = (
        "from pathlib import Path\n"
        "for rel in {files!r}:\n"
        "    p = Path(rel)\n"
        "    p.parent.mkdir(parents=True, exist_ok=True)\n"
        "    p.write_text('x')\n"
    )
    write_notebook(
        tmp_path / "nbs" / "a.ipynb", writer.format(files=["figures/tiny/a.png", "reports/tiny/tables/a.csv"])
    )
    write_notebook(tmp_path / "nbs" / "b.ipynb", writer.format(files=["figures/tiny/b.svg"]))
    cfg_path = write_config(tmp_path, [{"name": "a"}, {"name": "b"}], models=["m-a"])
    stale = [tmp_path / "figures/tiny/gone.png", tmp_path / "reports/tiny/tables/gone.csv"]
    elsewhere = [tmp_path / "figures/other/keep.png", tmp_path / "reports/tiny/keep.txt"]
    for path in stale + elsewhere:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old")
    assert run_report(cfg_path, html=False) == 0
    assert not any(p.exists() for p in stale)  # written by no job of the run
    assert all(p.exists() for p in elsewhere)  # outside the folders the runner owns
    log = json.loads((tmp_path / "reports/tiny/run.json").read_text())
    assert log["a"]["outputs"] == ["figures/tiny/a.png", "reports/tiny/tables/a.csv"]
    assert log["b"]["outputs"] == ["figures/tiny/b.svg"]

    # a run of one notebook keeps what the other jobs recorded, removes what the re-run no longer writes
    write_notebook(tmp_path / "nbs" / "a.ipynb", writer.format(files=["figures/tiny/a.png"]))
    assert run_report(cfg_path, only=["a"], html=False) == 0
    assert (tmp_path / "figures/tiny/b.svg").exists() and (tmp_path / "figures/tiny/a.png").exists()
    assert not (tmp_path / "reports/tiny/tables/a.csv").exists()

    # after a failed job nothing is removed
    (tmp_path / "figures/tiny/left.png").write_text("old")
    write_notebook(tmp_path / "nbs" / "b.ipynb", "raise RuntimeError('no')")
    assert run_report(cfg_path, html=False) == 1
    assert (tmp_path / "figures/tiny/left.png").exists()


def test_no_file_is_removed_when_a_job_entry_predates_the_outputs_record(tmp_path):
    from cbmir.report import remove_stale_outputs

    cfg = load_config(write_config(tmp_path, [{"name": "a"}], models=["m-a"]))
    old = cfg.figures_dir / "old.png"
    old.parent.mkdir(parents=True)
    old.write_text("x")
    assert remove_stale_outputs(cfg, {"a": {"status": "ok"}}) == [] and old.exists()
    assert remove_stale_outputs(cfg, {"a": {"status": "ok", "outputs": []}}) == ["figures/tiny/old.png"]
    assert not old.exists()
