"""The `cbmir` command line: every group registers its subcommands; user errors are one line, bugs are not."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cbmir.cli import GROUPS, build_parser, error_message, is_user_error, main
from cbmir.config import ConfigError
from cbmir.errors import CbmirError
from cbmir.manifest import ManifestError
from cbmir.store import write_store

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "lib" / "cbmir" / "cli"
COMMANDS = {
    "prepare",
    "combine",
    "summary",
    "radmini",
    "models",
    "embed",
    "search",
    "report",
    "site",
    "import-authors",
}


def test_every_command_group_registers_its_subcommands():
    assert sorted(GROUPS) == sorted(p.stem for p in CLI_DIR.glob("*.py") if p.stem != "__init__")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == COMMANDS


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(f"    {command}" in out for command in COMMANDS), out


def test_no_library_module_parses_arguments():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "lib" / "cbmir").rglob("*.py")
        if CLI_DIR not in p.parents and "argparse" in p.read_text()
    ]
    assert offenders == []


def test_choices_listed_in_the_cli_match_the_library():
    from cbmir.cli import prepare, search
    from cbmir.datasets.prepare import BUILDERS
    from cbmir.search import INDEX_TYPES

    assert sorted(prepare.DATASETS) == sorted(BUILDERS)
    assert search.INDEX_TYPES == INDEX_TYPES


def test_summary_of_the_committed_radmini_manifest(capsys):
    assert main(["summary", str(ROOT / "data_splits" / "radmini.csv")]) == 0
    out = capsys.readouterr().out
    assert "XR/chest/pneumonia" in out and "MR/brain/glioma" in out


def test_unknown_subcommand_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["no-such-stage"])
    assert exit_.value.code == 2
    assert "invalid choice: 'no-such-stage'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- user errors
@pytest.fixture
def bad_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("filepath,dataset,split,modality,anatomic_region,CT/lung/a\nx.png,d,tran,CT,lung,1\n")
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbmir: error: "), err
    return lines[0]


def test_manifest_error_is_one_line_with_status_2(bad_manifest, capsys):
    assert main(["summary", str(bad_manifest)]) == 2
    line = one_error_line(capsys)
    assert f"{bad_manifest}, row 1" in line and "column 'split' has 'tran'" in line


def test_config_error_is_one_line(tmp_path, capsys):
    config = tmp_path / "configs" / "c.yaml"
    config.parent.mkdir()
    text = (ROOT / "configs" / "radmini.yaml").read_text().replace("index_type:", "index_tpye:")
    config.write_text(text)
    assert main(["report", "--config", str(config)]) == 2
    line = one_error_line(capsys)
    assert line.endswith("c.yaml: index_tpye: unknown key (did you mean 'index_type'?)")


def test_missing_file_is_one_line(tmp_path, capsys):
    assert main(["report", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in one_error_line(capsys)
    assert main(["summary", str(tmp_path / "nope.csv")]) == 2
    assert one_error_line(capsys) == f"cbmir: error: {tmp_path / 'nope.csv'}: manifest file not found"


def test_bad_option_value_is_one_line(tmp_path, capsys, bad_manifest):
    manifest = tmp_path / "ok.csv"
    df = pd.read_csv(bad_manifest).assign(split="test")
    df.to_csv(manifest, index=False)
    argv = ["embed", "--model", "raw-pixels", "--manifest", str(manifest), "--data-root", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "s"), "--splits", "train,tst"]) == 2
    assert "--splits 'train,tst': unknown split(s) ['tst']" in one_error_line(capsys)
    assert main(["radmini", "build", "--out", str(tmp_path / "r"), "--sources", "nope"]) == 2
    assert "--sources: unknown source(s) ['nope']" in one_error_line(capsys)


def test_parameter_value_error_is_one_line(tmp_path, capsys):
    """A ValueError that names a parameter (the library's convention for bad arguments) is a user error."""
    n = 12
    fps = [f"img/{i}.png" for i in range(n)]
    manifest = pd.DataFrame(
        {"filepath": fps, "dataset": "toy", "split": ["train"] * 8 + ["test"] * 4, "modality": "CT"}
    )
    manifest["anatomic_region"] = "lung"
    manifest["CT/lung/a"] = 1
    manifest.to_csv(tmp_path / "m.csv", index=False)
    store = tmp_path / "store"
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    write_store(store, x, fps, spec="toy")
    argv = [
        "search",
        "--store",
        str(store),
        "--manifest",
        str(tmp_path / "m.csv"),
        "--out",
        str(tmp_path / "n"),
    ]
    assert main([*argv, "--k", "1000"]) == 2
    assert "parameter 'k' = 1000" in one_error_line(capsys)


def test_debug_flag_and_environment_show_the_traceback(bad_manifest, monkeypatch):
    monkeypatch.delenv("CBMIR_DEBUG", raising=False)
    with pytest.raises(ManifestError):
        main(["--debug", "summary", str(bad_manifest)])
    with pytest.raises(ManifestError):
        main(["summary", str(bad_manifest), "--debug"])
    monkeypatch.setenv("CBMIR_DEBUG", "1")
    with pytest.raises(ManifestError):
        main(["summary", str(bad_manifest)])
    monkeypatch.setenv("CBMIR_DEBUG", "0")
    assert main(["summary", str(bad_manifest)]) == 2


def test_internal_errors_keep_their_traceback(monkeypatch, tmp_path):
    import cbmir.datasets.prepare

    for err in (RuntimeError("a bug"), ValueError("operands could not be broadcast"), KeyError("x")):

        def broken(df, err=err):
            raise err

        monkeypatch.setattr(cbmir.datasets.prepare, "summary", broken)
        with pytest.raises(type(err)):
            main(["summary", str(ROOT / "data_splits" / "radmini.csv")])


def test_which_errors_are_the_users():
    assert is_user_error(ConfigError("c.yaml: k: must be >= 1"))
    assert is_user_error(CbmirError("anything cbmir names as bad input"))
    assert is_user_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "x.csv"))
    assert is_user_error(PermissionError(errno.EACCES, "Permission denied", "reports/out"))
    assert is_user_error(IsADirectoryError(errno.EISDIR, "Is a directory", "d"))
    assert is_user_error(NotADirectoryError(errno.ENOTDIR, "Not a directory", "f/x"))
    assert is_user_error(OSError(errno.ENOSPC, "No space left on device", "work/x"))
    assert is_user_error(ValueError("parameter 'k' = 1000 must be between 1 and 36"))
    assert is_user_error(ValueError("search_rows: parameters 'a' and 'b' differ"))
    assert not is_user_error(ValueError("operands could not be broadcast together"))
    assert not is_user_error(OSError(errno.EIO, "Input/output error", "x"))
    assert not is_user_error(RuntimeError("parameter 'k' is fine but this is a bug"))
    assert not is_user_error(KeyError("filepath"))
    assert error_message(FileNotFoundError(errno.ENOENT, "No such file or directory", "x.csv")) == (
        "x.csv: No such file or directory"
    )
    assert error_message(ConfigError("first\n  second")) == "first second"


# ------------------------------------------------------------------------------------ python -m cbmir
def run_cbmir(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CBMIR_DEBUG"}
    environ.update(PYTHONPATH=str(ROOT / "lib"), **env)
    return subprocess.run(
        [sys.executable, "-m", "cbmir", *args], capture_output=True, text=True, env=environ, timeout=300
    )


def test_python_dash_m_cbmir(bad_manifest):
    helped = run_cbmir("--help")
    assert helped.returncode == 0 and all(c in helped.stdout for c in COMMANDS)
    failed = run_cbmir("summary", str(bad_manifest))
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        f"cbmir: error: {bad_manifest}, row 1 (filepath 'x.png'): column 'split' has 'tran'; allowed "
        "['train', 'val', 'test'] (unknown values in the table: ['tran'])"
    ]
    debug = run_cbmir("summary", str(bad_manifest), CBMIR_DEBUG="1")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "ManifestError" in debug.stderr


def test_console_script_entry_point_is_main():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'cbmir = "cbmir.cli:main"' in text


def test_wait_reaches_the_library(tmp_path, monkeypatch, capsys):
    """`cbmir embed --wait` and `cbmir search --wait` pass `wait=True` to the store's and table's locks."""
    import cbmir.extract
    import cbmir.search

    seen = {}

    def fake_extract(*args, **kwargs):
        seen["embed"] = kwargs.get("wait")
        raise ValueError("parameter 'stop' ends the fake run")

    def fake_lock(path, wait=False):
        seen["search"] = wait
        raise ValueError("parameter 'stop' ends the fake run")

    monkeypatch.setattr(cbmir.extract, "extract_embeddings", fake_extract)
    monkeypatch.setattr(cbmir.search, "table_lock", fake_lock)
    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "filepath": ["a.png"],
            "dataset": "toy",
            "split": "train",
            "modality": "CT",
            "anatomic_region": "lung",
            "CT/lung/a": 1,
        }
    ).to_csv(manifest, index=False)
    embed = ["embed", "--model", "raw-pixels", "--manifest", str(manifest), "--data-root", str(tmp_path)]
    assert main([*embed, "--out", str(tmp_path / "s"), "--wait"]) == 2
    search = [
        "search",
        "--store",
        str(tmp_path / "s"),
        "--manifest",
        str(manifest),
        "--out",
        str(tmp_path / "n"),
    ]
    assert main([*search, "--wait"]) == 2
    assert seen == {"embed": True, "search": True}
    assert "parameter 'stop'" in capsys.readouterr().err


def test_output_into_a_closed_pipe_stops_quietly():
    """`cbmir models | head -1`: the reader closes the pipe early; no traceback, exit status 0."""
    proc = subprocess.run(
        f"{sys.executable} -m cbmir models | head -c 10 >/dev/null; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "lib")},
    )
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 0


def test_embed_decode_cache_option(tmp_path, capsys):
    """`cbmir embed --decode-cache DIR` stores the resized pixels there; a file in its place is one error line."""
    from cbmir.store import EmbeddingStore
    from PIL import Image

    rng = np.random.default_rng(0)
    names = [f"{i}.png" for i in range(3)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(tmp_path / name)
    manifest = pd.DataFrame({"filepath": names, "dataset": "toy", "split": "test", "modality": "CT",
                             "anatomic_region": "lung", "CT/lung/a": 1})  # fmt: skip
    manifest.to_csv(tmp_path / "m.csv", index=False)
    argv = [
        "embed",
        "--model",
        "raw-pixels",
        "--manifest",
        str(tmp_path / "m.csv"),
        "--data-root",
        str(tmp_path),
    ]
    assert main([*argv, "--out", str(tmp_path / "s"), "--decode-cache", str(tmp_path / "dc")]) == 0
    assert len(list((tmp_path / "dc").rglob("*.npy"))) == 3
    assert (
        EmbeddingStore.open(tmp_path / "s").provenance["decode_cache"]["key"]["geometry"]["kind"]
        == "cbmir.GreyPixels"
    )
    capsys.readouterr()
    (tmp_path / "afile").write_text("")
    assert main([*argv, "--out", str(tmp_path / "t"), "--decode-cache", str(tmp_path / "afile")]) == 2
    assert "parameter 'decode_cache'" in one_error_line(capsys)
