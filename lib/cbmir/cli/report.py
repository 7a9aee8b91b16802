"""`cbmir report`: run the report's notebooks for a config with papermill (cbmir.report)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir report` and `cbmir site`."""
    p = subparsers.add_parser("report", help="run the report's notebooks for a config (papermill)")
    p.add_argument("--config", default="configs/radmini.yaml", help="YAML config (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small subset and baseline models (smoke test)")
    p.add_argument("--redo", action="store_true", help="recompute finished stages (embeddings, neighbours)")
    p.add_argument(
        "--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks, e.g. 03_retrieval"
    )
    p.add_argument("--models", nargs="+", metavar="SPEC", help="override the config's models")
    p.add_argument("--out-root", help="write work/, reports/ and figures/ under this folder instead")
    p.add_argument(
        "--no-html", action="store_true", help="skip building the website (reports/<config>/site/)"
    )
    p.set_defaults(func=cmd_report)
    register_site(subparsers)


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


def register_site(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir site`."""
    p = subparsers.add_parser("site", help="rebuild the report website from the last run and check it")
    p.add_argument("--config", default="configs/radmini.yaml", help="YAML config (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="the site of a quick run")
    p.add_argument("--out-root", help="the folder a run wrote under instead of the project root")
    p.add_argument("--no-check", action="store_true", help="skip the headless-Chromium check")
    p.set_defaults(func=cmd_site)


def cmd_site(args: argparse.Namespace) -> int:
    from cbmir.site import site_command

    return site_command(args.config, quick=args.quick, out_root=args.out_root, check=not args.no_check)
