"""`cbmir embed`: embed a manifest's images into a resumable embedding store (cbmir.extract)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir embed`."""
    p = subparsers.add_parser("embed", help="embed manifest images into a resumable embedding store")
    p.add_argument(
        "--model", required=True, help="model spec (preset, timm:NAME, open_clip:ARCH@TAG, hf:REPO)"
    )
    p.add_argument("--manifest", required=True, nargs="+", help="manifest CSV file(s)")
    p.add_argument("--data-root", required=True, help="folder the manifest filepaths are relative to")
    p.add_argument("--out", required=True, help="store folder (work/<config>/embeddings/<model-slug>)")
    p.add_argument("--checkpoint", default=None, help="local weights file for the model")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: the preset's; halved on out-of-memory)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes (default: the cores but one, <= 16)",
    )
    p.add_argument("--chunk-size", type=int, default=1024, help="rows per resumable chunk")
    p.add_argument("--bf16", action="store_true", help="bfloat16 (autocast on GPU, bf16 weights on CPU)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16", "auto"],
        default=None,
        help="overrides --bf16; bf16 becomes fp16 on GPUs without native bf16; fp16 needs CUDA",
    )
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--redo", action="store_true", help="discard an existing store or partial run")
    p.add_argument("--splits", default=None, help="comma-separated splits to embed, e.g. train,test")
    p.add_argument(
        "--wait", action="store_true", help="wait for another run writing the same store instead of exiting"
    )
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default); ray: Ray Data actors, one per GPU (needs the [ray] extra)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to use with --engine ray (default: RAY_ADDRESS, else a local Ray runtime)",
    )
    p.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile on the CPU: auto (only when the run needs 10 TFLOP or more in bf16 or with AMX, 40 in fp32 elsewhere; counted), on, off",
    )
    p.add_argument(
        "--decode-cache",
        default=None,
        help="folder for decoded, resized pixels, reused by the next model that resizes alike (same vectors)",
    )
    p.set_defaults(func=cmd_embed)


def select_splits(manifest: Any, splits: str | None) -> Any:
    """The manifest rows of the comma-separated `splits` (all rows when None)."""
    from cbmir.cli import OptionError
    from cbmir.manifest import SPLITS

    if not splits:
        return manifest
    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SPLITS))
    if unknown or not wanted:
        raise OptionError(f"--splits {splits!r}: unknown split(s) {unknown}; allowed {list(SPLITS)}")
    selected = manifest[manifest["split"].isin(wanted)].reset_index(drop=True)
    if selected.empty:
        raise OptionError(f"--splits {splits!r}: the manifest has no rows in these splits")
    return selected


def cmd_embed(args: argparse.Namespace) -> int:
    from cbmir.extract import extract_embeddings
    from cbmir.manifest import read_manifest
    from cbmir.store import FAILED_FILE

    manifest = read_manifest(args.manifest if len(args.manifest) > 1 else args.manifest[0])
    manifest = select_splits(manifest, args.splits)
    store = extract_embeddings(
        manifest,
        args.data_root,
        args.model,
        args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        bf16=args.bf16,
        device=args.device,
        chunk_size=args.chunk_size,
        redo=args.redo,
        checkpoint=args.checkpoint,
        wait=args.wait,
        precision=args.precision,
        engine=args.engine,
        ray_address=args.ray_address,
        compile=args.compile,
        decode_cache=args.decode_cache,
    )
    engine = store.provenance.get("engine", "local")
    print(f"{store.path}: {len(store)} rows x {store.dim} dims, {len(store.failed)} failed ({engine} engine)")
    if len(store.failed):
        print(f"unreadable images are listed in {store.path / FAILED_FILE}", file=sys.stderr)
    return 0
