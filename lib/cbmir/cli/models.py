"""`cbmir models`: the model presets and whether their weights are here; `--load SPEC` loads one."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir models`."""
    p = subparsers.add_parser("models", help="list model presets and whether their weights are here")
    p.add_argument("--wide", action="store_true", help="show every column (source, embedding rule)")
    p.add_argument("--load", metavar="SPEC", help="load this model and print its provenance")
    p.add_argument("--checkpoint", metavar="PATH", help="local checkpoint file or folder for --load")
    p.add_argument(
        "--markdown",
        nargs="?",
        const="-",
        metavar="DOC",
        help="print the preset table as markdown, or rewrite it in DOC (e.g. docs/models.md)",
    )
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from cbmir.models import describe_encoder, models_listing, models_markdown, update_models_doc

    if args.load:
        print(describe_encoder(args.load, args.checkpoint))
    elif args.markdown == "-":
        print(models_markdown())
    elif args.markdown:
        changed = update_models_doc(args.markdown)
        print(f"{args.markdown}: {'table rewritten' if changed else 'already up to date'}")
    else:
        print(models_listing(wide=args.wide))
    return 0
