"""kNN classification from a neighbour table, as in the paper.

Class scores of a query = mean one-hot label of its first k neighbours. k is chosen on the validation
queries by micro-F1 (ties: the smallest k) and the **same k** is applied to the test queries.
The authors' code applied k - 1 on test (an off-by-one); `paper_k_minus_one=True` reproduces that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cbmir.classification import ClassificationResult, classification_metrics
from cbmir.metrics import encode_labels


def knn_scores(neighbour_labels: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """[Q, C] float64: fraction of the first `k` neighbours in each class."""
    nb = np.asarray(neighbour_labels, dtype=np.int64)
    if nb.ndim != 2 or not 1 <= k <= nb.shape[1]:
        raise ValueError(
            f"parameter 'k' = {k} must be between 1 and K = {nb.shape[1] if nb.ndim == 2 else '?'}"
        )
    scores = np.zeros((len(nb), n_classes))
    np.add.at(scores, (np.repeat(np.arange(len(nb)), k), nb[:, :k].ravel()), 1.0)
    return scores / k


def f1_by_k(
    neighbour_labels: np.ndarray, y_true: np.ndarray, n_classes: int, ks: Sequence[int]
) -> pd.DataFrame:
    """Micro-F1 of the kNN prediction (arg-max of `knn_scores`) for each k: DataFrame(k, f1_micro)."""
    from sklearn.metrics import f1_score

    nb = np.asarray(neighbour_labels, dtype=np.int64)
    counts = np.zeros((len(nb), n_classes))
    rows = np.arange(len(nb))
    wanted = set(ks)
    out = []
    for k in range(1, max(ks) + 1):  # counts of the first k neighbours, built up one rank at a time
        counts[rows, nb[:, k - 1]] += 1
        if k in wanted:
            out.append((k, f1_score(y_true, counts.argmax(axis=1), average="micro")))
    return pd.DataFrame(out, columns=["k", "f1_micro"])


@dataclass
class KnnResult:
    """Chosen k (on val), k applied on test, the val curve, test scores [Q, C] and test metrics."""

    k_val: int
    k_test: int
    val_curve: pd.DataFrame
    classes: np.ndarray
    test_scores: np.ndarray
    test_labels: np.ndarray
    result: ClassificationResult


def knn_classification(
    val_neighbours,
    test_neighbours,
    row_labels: Sequence[str] | np.ndarray,
    ks: Sequence[int] | None = None,
    paper_k_minus_one: bool = False,
) -> KnnResult:
    """Choose k on `val_neighbours` by micro-F1, then classify `test_neighbours` with that k.

    Both tables hold manifest rows; `row_labels` gives each manifest row's label. `ks` defaults to 1..K.
    """
    classes, codes = encode_labels(row_labels)
    c = len(classes)
    k_max = min(val_neighbours.ids.shape[1], test_neighbours.ids.shape[1])
    ks = list(range(1, k_max + 1)) if ks is None else sorted(set(ks))
    if not ks or ks[0] < 1 or ks[-1] > k_max:
        raise ValueError(f"parameter 'ks' must lie in 1..{k_max} (the neighbours stored)")
    curve = f1_by_k(codes[val_neighbours.ids], codes[val_neighbours.query_rows], c, ks)
    k_val = int(curve["k"].iloc[int(np.argmax(curve["f1_micro"].to_numpy()))])
    k_test = max(1, k_val - 1) if paper_k_minus_one else k_val
    y = codes[test_neighbours.query_rows]
    scores = knn_scores(codes[test_neighbours.ids], k_test, c)
    return KnnResult(k_val, k_test, curve, classes, scores, y, classification_metrics(y, scores, classes))
