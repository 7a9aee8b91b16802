"""`cbmir report`: run the report's notebooks for a config with papermill (cbmir.report)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir report`."""
    p = subparsers.add_parser("report", help="run the report's notebooks for a config (papermill)")
    p.add_argument("--config", default="configs/radmini.yaml", help="YAML config (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small subset and baseline models (smoke test)")
    p.add_argument("--redo", action="store_true", help="recompute finished stages (embeddings, neighbours)")
    p.add_argument(
        "--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks, e.g. 03_retrieval"
    )
    p.add_argument("--models", nargs="+", metavar="SPEC", help="override the config's models")
    p.add_argument("--out-root", help="write work/, reports/ and figures/ under this folder instead")
    p.add_argument("--no-html", action="store_true", help="skip the HTML copies")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from cbmir.report import run_report

    return run_report(
        args.config,
        quick=args.quick,
        redo=args.redo,
        only=args.only,
        models=args.models,
        out_root=args.out_root,
        html=not args.no_html,
    )
