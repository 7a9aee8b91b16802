"""`cbmir models`: the model presets and whether their weights are here; `--load SPEC` loads one."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir models`."""
    p = subparsers.add_parser("models", help="list model presets and whether their weights are here")
    p.add_argument("--wide", action="store_true", help="show every column (source, embedding rule)")
    p.add_argument("--load", metavar="SPEC", help="load this model and print its provenance")
    p.add_argument("--checkpoint", metavar="PATH", help="local checkpoint file or folder for --load")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from cbmir.models import list_models, load_encoder

    if args.load:
        enc = load_encoder(args.load, checkpoint=args.checkpoint)
        print(json.dumps(enc.provenance, indent=2, default=str))
        return 0
    table = list_models()
    cols = (
        ["name", "family", "dim", "behaviour", "weights_local", "where"]
        if not args.wide
        else list(table.columns)
    )
    with pd.option_context("display.max_colwidth", 90, "display.width", 250):
        print(table[cols].to_string(index=False))
    return 0
