"""`cbmir import-authors`: the authors' published artefacts (Zenodo 11196400) into cbmir's files (cbmir.authors)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir import-authors`."""
    p = subparsers.add_parser(
        "import-authors", help="import the authors' published embeddings, knn.csv and result tables"
    )
    p.add_argument("dir", metavar="DIR", help="folder holding the unpacked artefacts (searched recursively)")
    p.add_argument("--out", required=True, help="work folder to write into, e.g. work/<config>")
    p.add_argument(
        "--jobs", type=int, default=1,
        help="models imported at once, one process each (each holds one model's vectors: about 5 GB at 1.6 M x 768)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_import_authors)


def cmd_import_authors(args: argparse.Namespace) -> int:
    from cbmir.authors import import_authors

    report = import_authors(args.dir, args.out, progress=not args.no_progress, jobs=args.jobs)
    for preset, entry in report.items():
        parts = [f"{k}={v}" for k, v in entry.items() if k != "model_class"]
        print(f"{entry['model_class']} -> {preset}: {', '.join(parts)}")
    return 0
