"""Embedding store I/O: one `.npy` matrix (ours) against one HDF5 dataset per image (the authors' layout).

Writes and reads `--n` x `--dim` float32 rows: full read and a random-row read. The per-image HDF5 baseline
is timed on `--h5-n` images and extrapolated linearly to `--n` (said so in the output) unless `--h5-n` >= `--n`.
Reads are cold: each file's pages are dropped from the page cache (posix_fadvise DONTNEED) before reading.
Figures are printed and appended to benchmarks/RESULTS.md.

    python benchmarks/bench_store.py                 # 1,000,000 x 512; HDF5 on 20,000 images
    python benchmarks/bench_store.py --n 100000 --no-append
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from results import append_results, command_line


def _drop_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _matrix(n: int, dim: int, seed: int = 0, block: int = 65536) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        part = rng.standard_normal((min(block, n - start), dim), dtype=np.float32)
        out[start : start + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def _name(i: int) -> str:
    """An image key shaped like a manifest filepath (HDF5 makes the intermediate groups)."""
    return f"set{i % 4}/class{i % 40:02d}/img_{i:07d}.png"


def bench_npy(
    matrix: np.ndarray, folder: Path, rows: np.ndarray, rows_same_extent: np.ndarray
) -> dict[str, float]:
    path = folder / "embeddings.npy"
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        np.save(fh, matrix)
        fh.flush()
        os.fsync(fh.fileno())
    write = time.perf_counter() - t0
    _drop_cache(path)
    t0 = time.perf_counter()
    full = np.array(np.load(path, mmap_mode="r"))
    read = time.perf_counter() - t0
    assert np.array_equal(full, matrix)
    del full
    timings = {"write": write, "read": read, "bytes": path.stat().st_size}
    for key, picks in (("random", rows), ("random_same_extent", rows_same_extent)):
        _drop_cache(path)
        t0 = time.perf_counter()
        picked = np.load(path, mmap_mode="r")[picks]
        timings[key] = time.perf_counter() - t0
        assert np.array_equal(picked, matrix[picks])
    return timings


def bench_h5_per_image(matrix: np.ndarray, n: int, folder: Path, rows: np.ndarray) -> dict[str, float]:
    path = folder / "embeddings.h5"
    t0 = time.perf_counter()
    with h5py.File(path, "w") as fh:
        for i in range(n):
            fh.create_dataset(_name(i), data=matrix[i])
    with open(path, "rb+") as raw:
        os.fsync(raw.fileno())
    write = time.perf_counter() - t0
    _drop_cache(path)
    t0 = time.perf_counter()
    with h5py.File(path, "r") as fh:
        full = np.stack([fh[_name(i)][()] for i in range(n)])
    read = time.perf_counter() - t0
    assert np.array_equal(full, matrix[:n])
    _drop_cache(path)
    t0 = time.perf_counter()
    with h5py.File(path, "r") as fh:
        picked = np.stack([fh[_name(int(i))][()] for i in rows])
    random = time.perf_counter() - t0
    assert np.array_equal(picked, matrix[rows])
    return {"write": write, "read": read, "random": random, "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows (images)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--h5-n", type=int, default=20_000, help="images for the per-image HDF5 baseline")
    parser.add_argument("--random-rows", type=int, default=10_000, help="rows in the random-row read")
    parser.add_argument(
        "--dir", default=None, help="scratch folder (default: a temporary one, removed after)"
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    h5_n = min(args.h5_n, args.n)
    rng = np.random.default_rng(1)
    matrix = _matrix(args.n, args.dim)
    rows_npy = rng.choice(args.n, size=min(args.random_rows, args.n), replace=False)
    rows_h5 = rng.choice(h5_n, size=min(args.random_rows, h5_n), replace=False)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        ours = bench_npy(matrix, Path(scratch), rows_npy, rows_h5)
        (Path(scratch) / "embeddings.npy").unlink()
        h5 = bench_h5_per_image(matrix, h5_n, Path(scratch), rows_h5)
    scale = args.n / h5_n
    extrapolated = scale > 1
    h5_write, h5_read = h5["write"] * scale, h5["read"] * scale
    mb = args.n * args.dim * 4 / 1e6
    note = f" (timed on {h5_n:,} images, extrapolated linearly to {args.n:,})" if extrapolated else ""
    lines = [
        f"- data: {args.n:,} x {args.dim} float32 ({mb:,.0f} MB); cold reads (page cache dropped before each)",
        f"- ours, one .npy matrix: write {ours['write']:.2f} s ({mb / ours['write']:,.0f} MB/s), "
        f"full read via np.load(mmap_mode='r') {ours['read']:.2f} s ({mb / ours['read']:,.0f} MB/s), "
        f"{len(rows_npy):,} random rows {ours['random'] * 1e3:.0f} ms ({len(rows_npy) / ours['random']:,.0f} rows/s); "
        f"{len(rows_h5):,} random rows among the first {h5_n:,} {ours['random_same_extent'] * 1e3:.0f} ms",
        f"- baseline, one HDF5 dataset per image{note}: write {h5_write:.1f} s "
        f"({args.n / h5_write:,.0f} images/s), full read {h5_read:.1f} s ({args.n / h5_read:,.0f} images/s), "
        f"{len(rows_h5):,} random images {h5['random']:.2f} s ({len(rows_h5) / h5['random']:,.0f} images/s; "
        f"from the {h5_n:,}-image file); file {h5['bytes'] * scale / 1e6:,.0f} MB vs {ours['bytes'] / 1e6:,.0f} MB",
        f"- ratio HDF5-per-image / ours: write {h5_write / ours['write']:.0f}x, full read "
        f"{h5_read / ours['read']:.0f}x, random rows {h5['random'] / ours['random_same_extent']:.0f}x "
        f"(same {len(rows_h5):,} rows from the same {h5_n:,}-row extent, both cold)",
    ]
    print("\n".join(lines))
    if not args.no_append:
        command = command_line(__file__, argv)
        append_results(
            "bench_store: embedding store I/O, one .npy matrix vs one HDF5 dataset per image",
            command,
            lines,
            machine_extra=f"numpy {np.__version__}, h5py {h5py.__version__}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
