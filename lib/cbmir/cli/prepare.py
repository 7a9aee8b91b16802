"""`cbmir prepare`, `cbmir combine`, `cbmir summary`: the paper's datasets as manifests (cbmir.datasets.prepare)."""

from __future__ import annotations

import argparse
import sys

# The dataset names `cbmir prepare` accepts (cbmir.datasets.prepare.BUILDERS; listed here so --help stays quick).
DATASETS = ("chexpert", "mimic", "nih14", "radimagenet")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir prepare`, `cbmir combine` and `cbmir summary`."""
    p = subparsers.add_parser("prepare", help="prepare one official dataset into a manifest CSV")
    p.add_argument("name", choices=DATASETS, help="which dataset")
    p.add_argument("raw_root", help="the dataset's folder (layout: docs/datasets.md)")
    p.add_argument("out_csv", help="manifest to write; filepaths are relative to RAW_ROOT's parent")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level train/val split")
    p.add_argument("--keep-missing", action="store_true", help="keep rows whose image file is missing")
    p.add_argument("--no-check-files", action="store_true", help="do not check that image files exist")
    p.add_argument("--ignore-list", default=None, help="text file of filepaths / ids to leave out")
    p.add_argument(
        "--drop-uncertain",
        action="store_true",
        help="chexpert only: leave out images with any uncertain (-1) finding, as the authors' script did",
    )
    p.set_defaults(func=cmd_prepare)

    c = subparsers.add_parser("combine", help="concatenate manifests, merging identical labels")
    c.add_argument("out_csv")
    c.add_argument("in_csv", nargs="+")
    c.set_defaults(func=cmd_combine)

    s = subparsers.add_parser("summary", help="images per dataset, modality, label and split")
    s.add_argument("csv")
    s.set_defaults(func=cmd_summary)


def cmd_prepare(args: argparse.Namespace) -> int:
    from cbmir.datasets.prepare import prepare

    df = prepare(
        args.name,
        args.raw_root,
        args.out_csv,
        seed=args.seed,
        check_files=not args.no_check_files,
        on_missing="keep" if args.keep_missing else "drop",
        ignore_list=args.ignore_list,
        drop_uncertain=args.drop_uncertain,
    )
    print_report(df.attrs["report"], args.out_csv)
    return 0


def print_report(report: dict, out_csv: str) -> None:
    """The preparation report in a few lines: counts on stdout, missing images on stderr."""
    from cbmir.datasets.prepare import report_path

    counts = ", ".join(f"{k}={v}" for k, v in report["counts"].items())
    print(f"{report['dataset']}: wrote {out_csv} ({counts})")
    splits = ", ".join(f"{k}={v}" for k, v in report["images_per_split"].items())
    print(f"  images per split: {splits}")
    if report["missing"]:
        verb = "dropped" if report["on_missing"] == "drop" else "kept"
        print(
            f"  {len(report['missing'])} image file(s) missing or unreadable ({verb}), e.g.:", file=sys.stderr
        )
        for item in report["missing"][:5]:
            print(f"    {item['filepath']}: {item['problem']}", file=sys.stderr)
    print(f"  report: {report_path(out_csv)}")


def cmd_combine(args: argparse.Namespace) -> int:
    from cbmir.datasets.prepare import combine

    df = combine(args.in_csv, args.out_csv)
    print(f"wrote {args.out_csv}: {len(df)} images, {df['dataset'].nunique()} dataset(s)")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    import pandas as pd

    from cbmir.datasets.prepare import summary
    from cbmir.manifest import read_manifest

    table = summary(read_manifest(args.csv))
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(table.to_string(index=False))
    return 0
