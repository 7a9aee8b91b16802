"""Near-duplicate grouping for RadMini: perceptual hashes of the stored images, grouped by a Hamming threshold.

Rule (documented in the data card): two stored images are near-duplicates when the Hamming distance of their
64-bit DCT perceptual hashes (`imagehash.phash`, 8x8, computed on the stored 8-bit greyscale PNG) is at most
`PHASH_MAX_DISTANCE`. Groups are the connected components of that relation. On the Br35H brain MRIs, distances
up to 6 join copies of one slice that differ in contrast, sharpening or crop; at 7-8 different sequences of one
head start to join, and so do the first groups that mix tumour and no-tumour images. Between two sources the
threshold is `CROSS_SOURCE_MAX_DISTANCE`: the copies shipped in two packages are at distance 0, while at 6 a
Colin27 template slice already met a Br35H tumour slice. A group is one case.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

PHASH_SIZE = 8  # 8x8 DCT coefficients -> 64-bit hash
PHASH_MAX_DISTANCE = 6  # bits out of 64, between images of one source
CROSS_SOURCE_MAX_DISTANCE = 2  # between images of two sources (a file shipped twice, re-encoded at most)


def image_hash(img: Image.Image) -> int:
    """The 64-bit perceptual hash of an image (greyscale), as an unsigned integer."""
    import imagehash

    bits = imagehash.phash(img.convert("L"), hash_size=PHASH_SIZE).hash.ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming_pairs(hashes: Sequence[int], max_distance: int = PHASH_MAX_DISTANCE) -> np.ndarray:
    """All pairs `(i, j)`, i < j, whose hashes differ in at most `max_distance` bits; `[P, 2]` int64."""
    h = np.asarray([int(x) for x in hashes], dtype=np.uint64)
    out = []
    block = 512
    for start in range(0, len(h), block):
        rows = h[start : start + block]
        dist = np.bitwise_count(rows[:, None] ^ h[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = i < j
        out.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), dtype=np.int64)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of `n` nodes joined by `pairs`: each node's smallest member index."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def near_duplicate_groups(hashes: Sequence[int], max_distance: int = PHASH_MAX_DISTANCE) -> np.ndarray:
    """For each image, the index of the first image of its near-duplicate group (itself when alone)."""
    return components(len(hashes), hamming_pairs(hashes, max_distance))


def duplicate_pairs(hashes: Sequence[int], sources: Sequence[str]) -> np.ndarray:
    """Near-duplicate pairs: within a source at most PHASH_MAX_DISTANCE bits, across sources at most
    CROSS_SOURCE_MAX_DISTANCE."""
    pairs = hamming_pairs(hashes, PHASH_MAX_DISTANCE)
    if not len(pairs):
        return pairs
    h = np.asarray([int(x) for x in hashes], dtype=np.uint64)
    dist = np.bitwise_count(h[pairs[:, 0]] ^ h[pairs[:, 1]])
    src = np.asarray(sources, dtype=object)
    same = src[pairs[:, 0]] == src[pairs[:, 1]]
    return pairs[same | (dist <= CROSS_SOURCE_MAX_DISTANCE)]
