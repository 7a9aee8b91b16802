"""The `cbmir` command line: one subcommand per pipeline stage.

Each stage module exposes `register_cli(subparsers)`, which adds its subcommand(s) and sets
`func` on the parser; heavy imports stay inside the command functions so that `cbmir --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in the order they appear in `cbmir --help`.
STAGE_MODULES = [
    "cbmir.datasets.prepare",  # cbmir prepare / cbmir combine / cbmir summary
    "cbmir.datasets.radmini",  # cbmir radmini
    "cbmir.models",  # cbmir models
    "cbmir.report",  # cbmir report
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbmir", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGE_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
