"""`cbmir search`: nearest neighbours of one split among another, from embedding stores (cbmir.search)."""

from __future__ import annotations

import argparse
from pathlib import Path

# cbmir.search.INDEX_TYPES, listed here so that `cbmir --help` does not import FAISS.
INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
BUILDER_OPTIONS = ("m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_m", "pq_nbits", "k_factor")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cbmir search`."""
    p = subparsers.add_parser("search", help="nearest-neighbour search over an embedding store")
    p.add_argument("--store", action="append", required=True, help="embedding store folder (repeatable)")
    p.add_argument("--manifest", nargs="+", required=True, help="manifest CSV(s)")
    p.add_argument("--out", help="output neighbours .npz (with --text: an optional CSV of the ranked images)")
    p.add_argument(
        "--text", action="append", help="query by text: rank the index images for this sentence (repeatable)"
    )
    p.add_argument(
        "--model", help="with --text: the store's model spec (default: the one its provenance records)"
    )
    p.add_argument("--checkpoint", help="with --text: local weights of the model")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--index-split", default="train")
    p.add_argument("--query-split", default="test")
    p.add_argument("--exclude-self", action="store_true", help="queries = index split, own row dropped")
    p.add_argument("--index-type", choices=INDEX_TYPES, default="flat")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--m", type=int, help="HNSW graph degree")
    p.add_argument("--ef-construction", type=int, help="HNSW efConstruction")
    p.add_argument("--ef-search", type=int, help="HNSW efSearch")
    p.add_argument("--nlist", type=int, help="IVF lists")
    p.add_argument("--nprobe", type=int, help="IVF lists probed")
    p.add_argument("--pq-m", type=int, help="IVF-PQ sub-quantisers")
    p.add_argument("--pq-nbits", type=int, choices=(4, 8), help="IVF-PQ bits per code (4: fast-scan)")
    p.add_argument("--k-factor", type=int, help="IVF-PQ candidates re-ranked exactly, as a multiple of k")
    p.add_argument(
        "--wait", action="store_true", help="wait for another run writing the same table instead of exiting"
    )
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from cbmir.errors import CbmirError
    from cbmir.search import table_lock

    if args.text:
        return _text_search(args)
    if not args.out:
        raise CbmirError("cbmir search: --out is required (or give --text to query by text)")

    with table_lock(Path(args.out), args.wait):
        return _search(args)


def _search(args: argparse.Namespace) -> int:
    from cbmir.manifest import case_ids, read_manifest, split_rows
    from cbmir.search import search_rows
    from cbmir.store import open_stores

    manifest = read_manifest(args.manifest if len(args.manifest) > 1 else args.manifest[0])
    vectors = open_stores(args.store, manifest)
    index_rows = split_rows(manifest, args.index_split)
    query_rows = index_rows if args.exclude_self else split_rows(manifest, args.query_split)
    for name, rows in (("index", index_rows), ("query", query_rows)):
        missing = len(rows) - len(vectors.present(rows))
        if missing:
            print(
                f"{name} rows: {missing} of {len(rows)} manifest rows have no embedding (failed images); skipped"
            )
    index_rows = vectors.present(index_rows)
    query_rows = index_rows if args.exclude_self else vectors.present(query_rows)
    params = {key: getattr(args, key) for key in BUILDER_OPTIONS if getattr(args, key) is not None}
    nb = search_rows(
        vectors,
        index_rows,
        query_rows,
        args.k,
        cases=case_ids(manifest),
        exclude_self=args.exclude_self,
        index_type=args.index_type,
        batch_size=args.batch_size,
        **params,
    )
    nb.save(args.out)
    print(
        f"wrote {args.out}: {len(nb.query_rows)} queries x {nb.k} neighbours over {len(index_rows)} index rows"
    )
    return 0


def _text_search(args: argparse.Namespace) -> int:
    """`cbmir search --text`: the index images nearest to each sentence, by the model's text encoder."""
    import numpy as np
    import pandas as pd

    from cbmir.errors import CbmirError
    from cbmir.manifest import read_manifest, row_labels, split_rows
    from cbmir.models import load_encoder
    from cbmir.store import EmbeddingStore, open_stores
    from cbmir.text_retrieval import embed_texts, search_text

    manifest = read_manifest(args.manifest if len(args.manifest) > 1 else args.manifest[0])
    vectors = open_stores(args.store, manifest)
    model = args.model or EmbeddingStore.open(args.store[0]).provenance.get("spec")
    if not model:
        raise CbmirError(f"{args.store[0]}: its provenance names no model; pass --model SPEC")
    encoder = load_encoder(model, checkpoint=args.checkpoint)
    index_rows = vectors.present(split_rows(manifest, args.index_split))
    queries = embed_texts(encoder, args.text)
    scores, pos = search_text(vectors.take(index_rows), queries, args.k)
    labels = row_labels(manifest, "label")
    frames = []
    for q, text in enumerate(args.text):
        rows = index_rows[pos[q]]
        frames.append(
            pd.DataFrame(
                {
                    "query": text,
                    "rank": np.arange(1, len(rows) + 1),
                    "row": rows,
                    "filepath": manifest["filepath"].to_numpy()[rows],
                    "label": labels[rows],
                    "cosine": scores[q],
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 80):
        print(f"model {model}: {len(index_rows)} {args.index_split} images searched")
        print(table.to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0
