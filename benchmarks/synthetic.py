"""Seeded synthetic embeddings shaped like the paper's data: 161 classes, skewed sizes, unit vectors.

Class sizes follow a smooth log-decay from about 226,000 down to 13 images (the paper's extremes) and sum to
`n`. Vectors are `normalise(class centre + low-rank noise + isotropic noise)`; class centres sit in a
hierarchy modality (4) -> region (16) -> class (161), so classes of one region share anatomy and are easy to
confuse, as pathologies are in the paper; the 14 largest classes share one region, like the chest X-ray
labels that dominate the paper's data. The noise scales are tuned so that exact P@1 is about 0.6 at the
paper's scale (BiomedCLIP in the paper: 0.594 micro). The noise is mostly low-rank (64 directions, power-law
spectrum) plus a small isotropic part (`iso`): a moderate intrinsic dimension, as foundation-model embeddings
have. Approximate search is harder when the isotropic part is larger: `HARD` (iso 0.03) is that variant
(its measured exact P@1: benchmarks/RESULTS.md), for sensitivity checks
(`bench_search.py --hard`). Generation runs in chunks; the same seed gives the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAPER_N = 1_600_000
N_CLASSES = 161
LARGEST, SMALLEST = 226_000, 13


def class_sizes(n: int = PAPER_N, n_classes: int = N_CLASSES) -> np.ndarray:
    """Sizes in decreasing order summing to `n`: log-size decays as rank**q, q solved for the paper's sum."""
    rank = np.arange(n_classes) / (n_classes - 1)
    span = np.log(LARGEST / SMALLEST)

    def total(q: float) -> float:
        return float(np.sum(LARGEST * np.exp(-span * rank**q)))

    lo, hi = 0.1, 10.0
    for _ in range(60):  # bisection: total(q) grows with q
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < PAPER_N else (lo, mid)
    sizes = LARGEST * np.exp(-span * rank**lo) * (n / PAPER_N)
    sizes = np.maximum(np.round(sizes).astype(np.int64), 2)
    sizes[0] += n - sizes.sum()  # exact total; the largest class absorbs the rounding
    return sizes


HARD = {"spread": (1.0, 0.7, 0.25), "low_rank_scale": 1.0, "iso": 0.03}


@dataclass
class SyntheticSpace:
    """Class centres and noise model; `sample(labels, rng)` draws unit vectors for given class labels."""

    centres: np.ndarray  # [C, D] float32
    basis: np.ndarray  # [R, D] float32, low-rank noise directions scaled by their spectrum
    iso: float  # isotropic noise standard deviation per dimension

    @classmethod
    def make(
        cls,
        dim: int = 512,
        n_classes: int = N_CLASSES,
        seed: int = 0,
        rank: int = 64,
        spread: tuple[float, float, float] = (1.0, 0.7, 0.22),
        low_rank_scale: float = 1.0,
        iso: float = 0.01,
    ) -> SyntheticSpace:
        """Hierarchical centres (modality, region, class offsets of norm `spread`) and a decaying noise basis."""
        rng = np.random.default_rng([seed, 1])

        def unit(k: int) -> np.ndarray:
            v = rng.standard_normal((k, dim))
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        modality = unit(4) * spread[0]
        region = modality[np.arange(16) % 4] + unit(16) * spread[1]
        # Class ids are size ranks: the 14 largest share region 0 (chest X-ray pathologies, hard to tell
        # apart, as in the paper); the others are dealt round-robin to the other 15 regions.
        cls_region = np.where(np.arange(n_classes) < 14, 0, 1 + (np.arange(n_classes) - 14) % 15)
        centres = region[cls_region] + unit(n_classes) * spread[2]
        spectrum = low_rank_scale / np.sqrt(np.arange(1, rank + 1))  # power-law decay, total scale fixed
        spectrum *= low_rank_scale / np.sqrt(np.sum(spectrum**2))
        q, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
        basis = (q.T * spectrum[:, None]).astype(np.float32)
        return cls(centres.astype(np.float32), basis, iso)

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unit vectors [len(labels), D] float32 for class ids `labels`."""
        z = rng.standard_normal((len(labels), self.basis.shape[0]), dtype=np.float32)
        x = self.centres[labels] + z @ self.basis
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(self.iso)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def make_dataset(
    n: int = PAPER_N,
    n_queries: int = 4000,
    dim: int = 512,
    seed: int = 0,
    chunk: int = 65_536,
    space: SyntheticSpace | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(index vectors [n, D], index labels [n], query vectors [Q, D], query labels [Q]), all seeded.

    Index rows are shuffled; queries are held-out draws from the same distribution with class frequencies
    proportional to the class sizes, at least one query per class (so Q is about `n_queries`).
    """
    space = space or SyntheticSpace.make(dim=dim, seed=seed)
    sizes = class_sizes(n, len(space.centres))
    rng = np.random.default_rng([seed, 2])
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    xb = np.empty((n, dim), dtype=np.float32)
    for i, start in enumerate(range(0, n, chunk)):
        xb[start : start + chunk] = space.sample(
            labels[start : start + chunk], np.random.default_rng([seed, 3, i])
        )
    q_per_class = np.maximum(1, np.round(sizes * n_queries / n).astype(np.int64))
    q_labels = rng.permutation(np.repeat(np.arange(len(sizes)), q_per_class))
    xq = space.sample(q_labels, np.random.default_rng([seed, 4]))
    return xb, labels.astype(np.int64), xq, q_labels.astype(np.int64)
