"""Seeded toy data for the kNN-classification tests, and the slow reference vote."""

from __future__ import annotations

from collections import Counter

import numpy as np


def knn_data(seed: int = 0, n_cases: int = 24, n_classes: int = 3, dim: int = 6, spread: float = 1.0):
    """(x, labels, splits, cases): cases of 1-4 images each, one class per case, class means scaled by `spread`
    (larger = better separated classes); splits by case."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * spread
    x, labels, cases, splits = [], [], [], []
    for c in range(n_cases):
        cls = c % n_classes
        split = ("train", "train", "val", "test")[c % 4] if c >= n_classes else "train"
        own = rng.normal(size=dim) * 0.6
        for _ in range(rng.integers(1, 5)):
            x.append(centres[cls] + own + rng.normal(size=dim) * 0.5)
            labels.append(f"class{cls}")
            cases.append(f"p{c}")
            splits.append(split)
    return np.array(x), np.array(labels), np.array(splits), np.array(cases)


def ref_vote(codes):
    """The majority class of `codes`, ties to the smallest code."""
    counts = Counter(codes)
    best = max(counts.values())
    return min(c for c, n in counts.items() if n == best)


def cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_neighbours(xb, xq, k, index_cases=None, query_cases=None):
    """The k most cosine-similar index rows of each query (outside its own case, when cases are given), by
    sorting all of them."""
    out = []
    for i, q in enumerate(xq):
        cand = [j for j in range(len(xb)) if index_cases is None or index_cases[j] != query_cases[i]]
        cand.sort(key=lambda j: -cos(xb[j], q))
        out.append(cand[:k])
    return np.array(out)
