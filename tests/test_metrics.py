"""Fast retrieval metrics against slow, obviously-correct per-query references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from cbmir.metrics import (
    average_precision_at_n,
    bootstrap_ci,
    hit_at_n,
    map_at_r,
    micro_macro,
    per_class_precision,
    plain_precision_at_n,
    precision_at_n,
    r_precision,
    retrieval_metrics,
    retrieval_metrics_by_level,
)
from cbmir.search import Neighbours

# ---------------------------------------------------------------- references (plain Python, one query at a time)


def ref_precision(nb: list[int], q: int, n_c: int, N: int) -> float:
    n = min(N, n_c)
    if n == 0:
        return math.nan
    return sum(1 for label in nb[:n] if label == q) / n


def ref_ap(nb: list[int], q: int, n_c: int, N: int) -> float:
    n = min(N, n_c)
    if n == 0:
        return math.nan
    total, hits = 0.0, 0
    for j, label in enumerate(nb[:N], start=1):
        if label == q:
            hits += 1
            total += hits / j
    return total / n


def ref_hit(nb: list[int], q: int, n_c: int, N: int) -> float:
    if n_c == 0:
        return math.nan
    return float(q in nb[:N])


def ref_plain_precision(nb: list[int], q: int, n_c: int, N: int) -> float:
    if n_c == 0:
        return math.nan
    return sum(1 for label in nb[:N] if label == q) / N


def ref_r_precision(nb: list[int], q: int, n_c: int) -> float:
    r = min(n_c, len(nb))
    if r == 0:
        return math.nan
    return sum(1 for label in nb[:r] if label == q) / r


def ref_map_at_r(nb: list[int], q: int, n_c: int) -> float:
    r = min(n_c, len(nb))
    if r == 0:
        return math.nan
    total, hits = 0.0, 0
    for j, label in enumerate(nb[:r], start=1):
        if label == q:
            hits += 1
            total += hits / j
    return total / r


def ref_table(fn, nb, q, counts):
    return np.array(
        [
            [fn(list(nb[i]), int(q[i]), int(counts[q[i]]), N) for N in range(1, nb.shape[1] + 1)]
            for i in range(len(q))
        ]
    )


def ref_micro_macro(per_query, q):
    """Mean over defined queries; mean over classes of the class mean."""
    rows = [i for i in range(len(q)) if not any(math.isnan(v) for v in per_query[i])]
    K = len(per_query[0])
    micro = [sum(per_query[i][j] for i in rows) / len(rows) for j in range(K)]
    by_class: dict[int, list[int]] = {}
    for i in rows:
        by_class.setdefault(int(q[i]), []).append(i)
    macro = [
        sum(sum(per_query[i][j] for i in members) / len(members) for members in by_class.values())
        / len(by_class)
        for j in range(K)
    ]
    return np.array(micro), np.array(macro)


def random_case(seed: int):
    """Random labels with classes smaller than K in the index and classes absent from it."""
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 8))
    k = int(rng.choice([1, 2, 5, 17]))
    q_count = int(rng.integers(1, 40))
    counts = rng.integers(0, 2 * k + 2, size=n_classes)
    counts[rng.integers(0, n_classes)] = 0  # at least one class absent from the index
    counts[rng.integers(0, n_classes)] = max(1, counts.max())  # at least one present
    present = np.flatnonzero(counts > 0)
    q = rng.integers(0, n_classes, size=q_count)
    q[0] = present[0]  # at least one defined query
    # neighbours come from the index, biased towards the query's class
    nb = np.where(rng.random((q_count, k)) < 0.4, q[:, None], rng.choice(present, size=(q_count, k)))
    nb = np.where(np.isin(nb, present), nb, present[0])
    return nb, q, counts


@pytest.mark.parametrize("seed", range(40))
def test_fast_metrics_match_references(seed):
    nb, q, counts = random_case(seed)
    for fast, slow in (
        (precision_at_n, ref_precision),
        (average_precision_at_n, ref_ap),
        (hit_at_n, ref_hit),
        (plain_precision_at_n, ref_plain_precision),
    ):
        got = fast(nb, q, counts)
        want = ref_table(slow, nb, q, counts)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, equal_nan=True)
        micro, macro = micro_macro(got, q)
        ref_mi, ref_ma = ref_micro_macro(want.tolist(), q)
        np.testing.assert_allclose(micro, ref_mi, rtol=0, atol=1e-12)
        np.testing.assert_allclose(macro, ref_ma, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_r_based_metrics_match_references(seed):
    nb, q, counts = random_case(seed)
    for fast, slow in ((r_precision, ref_r_precision), (map_at_r, ref_map_at_r)):
        want = np.array([slow(list(nb[i]), int(q[i]), int(counts[q[i]])) for i in range(len(q))])
        np.testing.assert_allclose(fast(nb, q, counts), want, rtol=0, atol=1e-12, equal_nan=True)
    # R-precision with R capped at K is modified P@K
    np.testing.assert_allclose(
        r_precision(nb, q, counts), precision_at_n(nb, q, counts)[:, -1], equal_nan=True
    )


def test_hand_computed_case():
    # index: class 0 x2, class 1 x3, class 2 x0; K = 4
    counts = np.array([2, 3, 0])
    q = np.array([0, 1, 1, 2])
    nb = np.array([[0, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 0], [0, 1, 0, 1]])
    p = precision_at_n(nb, q, counts)
    np.testing.assert_allclose(p[0], [1, 0.5, 0.5, 0.5])  # n = min(N, 2)
    np.testing.assert_allclose(p[1], [0, 0.5, 2 / 3, 2 / 3])  # n = min(N, 3)
    np.testing.assert_allclose(p[2], [1, 1, 1, 1])
    assert np.isnan(p[3]).all()  # class absent from the index: undefined
    micro, macro = micro_macro(p, q)
    np.testing.assert_allclose(micro[0], 2 / 3)
    np.testing.assert_allclose(macro[0], (1 + (0 + 1) / 2) / 2)
    ap = average_precision_at_n(nb, q, counts)
    np.testing.assert_allclose(ap[0], [1, 0.5, (1 + 2 / 3) / 2, (1 + 2 / 3) / 2])
    np.testing.assert_allclose(hit_at_n(nb, q, counts)[1], [0, 1, 1, 1])
    np.testing.assert_allclose(plain_precision_at_n(nb, q, counts)[1], [0, 1 / 2, 2 / 3, 3 / 4])
    # query 1 (class 1, n_c = 3, R = 3): hits at ranks 2, 3 -> R-precision 2/3, MAP@R (1/2 + 2/3) / 3
    np.testing.assert_allclose(r_precision(nb, q, counts)[:3], [0.5, 2 / 3, 1])
    np.testing.assert_allclose(map_at_r(nb, q, counts)[:3], [0.5, (1 / 2 + 2 / 3) / 3, 1])


def test_retrieval_metrics_from_neighbours_and_levels():
    manifest = pd.DataFrame(
        {
            "filepath": [f"{i}.png" for i in range(6)],
            "dataset": "toy",
            "split": ["train", "train", "train", "test", "test", "test"],
            "modality": "x",
            "anatomic_region": "x",
        }
    )
    labels = ["CT/lung/a", "CT/lung/b", "MR/knee/a", "CT/lung/a", "CT/lung/b", "US/neck/a"]
    for name in sorted(set(labels)):
        manifest[name] = [int(v == name) for v in labels]
    nb = Neighbours(
        query_rows=[3, 4, 5], ids=[[1, 0], [1, 2], [0, 1]], scores=np.zeros((3, 2)), index_rows=[0, 1, 2]
    )
    df = retrieval_metrics(nb, np.array(labels, dtype=object), max_n=2)
    assert df.attrs == {"n_queries": 2, "n_excluded": 1}  # US/neck/a has no index image
    np.testing.assert_allclose(df["micro"], [0.5, 0.5])  # q3 (a, n_c=1): [0, 0]; q4 (b, n_c=1): [1, 1]
    levels = retrieval_metrics_by_level(nb, manifest, max_n=2)
    region = levels[levels.level == "region"]
    # region level: query 3 (CT/lung, n_c=2): [1, 1]; query 4 (CT/lung): [1, 0.5]; query 5 excluded
    np.testing.assert_allclose(region["micro"], [1.0, 0.75])
    assert set(levels.level) == {"modality", "region", "label"}
    per_class = per_class_precision(nb, labels, ns=(1, 2))
    assert per_class["class"].tolist() == ["CT/lung/a", "CT/lung/b", "US/neck/a"]
    assert per_class["n_index"].tolist() == [1, 1, 0]
    np.testing.assert_allclose(per_class["P@1"], [0.0, 1.0, np.nan])


# ---------------------------------------------------------------- errors


def test_bad_parameters():
    with pytest.raises(ValueError, match="'query_labels'"):
        precision_at_n(np.zeros((3, 2), int), np.zeros(2, int), np.ones(1, int))
    with pytest.raises(ValueError, match="'average'"):
        bootstrap_ci(np.ones((3, 2)), np.zeros(3, int), average="weighted")
    with pytest.raises(ValueError, match="no query with a defined metric"):
        micro_macro(np.full((2, 2), np.nan), np.zeros(2, int))
