"""The `cbmir` command line: every stage contributes its subcommand, and one runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from cbmir.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_registers_its_subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {
        "prepare",
        "combine",
        "summary",
        "radmini",
        "models",
        "report",
        # "embed" and "search" moved out of cbmir.extract / cbmir.search into the cbmir.cli package
        # (branch cli); take that branch's version of this test at merge
    }


def test_summary_of_the_committed_radmini_manifest(capsys):
    assert main(["summary", str(ROOT / "data_splits" / "radmini.csv")]) == 0
    out = capsys.readouterr().out
    assert "XR/chest/pneumonia" in out and "MR/brain/glioma" in out


def test_unknown_subcommand_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["no-such-stage"])
