"""Classification metrics for kNN and linear-probe scores (scikit-learn).

Single-label, multi-class: the prediction is the arg-max of the class scores. Micro averages run over all
classes (for single-label data micro precision = recall = F1 = accuracy). Macro averages and ROC-AUC run over
the classes present in `y_true`; classes with no test sample are skipped and listed in `skipped_classes`.
ROC-AUC is one-vs-rest on the scores; it is NaN when fewer than two classes are present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class ClassificationResult:
    """Metric name -> value, and the classes skipped because the test set has none of them."""

    metrics: dict[str, float]
    skipped_classes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row: the metrics and the number of skipped classes."""
        return pd.DataFrame([{**self.metrics, "n_skipped_classes": len(self.skipped_classes)}])


def classification_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str] | None = None,
    sample_weight: np.ndarray | None = None,
) -> ClassificationResult:
    """Accuracy, micro/macro precision, recall, F1 and ROC-AUC from `scores` [N, C] and `y_true` [N] in 0..C-1.

    `sample_weight` (non-negative, e.g. how often a bootstrap drew each query) weighs every metric as if each
    query were repeated that many times; classes present = classes with positive weight.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or y.shape != (s.shape[0],) or len(y) == 0:
        raise ValueError(
            f"parameters 'y_true' [N] and 'scores' [N, C] disagree or are empty: {y.shape}, {s.shape}"
        )
    n_classes = s.shape[1]
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"parameter 'y_true' has class ids outside 0..{n_classes - 1}")
    if not np.isfinite(s).all():
        raise ValueError("parameter 'scores' has non-finite values")
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w is not None:
        if w.shape != y.shape or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(
                "parameter 'sample_weight' must hold one finite weight >= 0 per sample, not all 0"
            )
        y, s, w = y[w > 0], s[w > 0], w[w > 0]
    names = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"parameter 'classes' has {len(names)} names for {n_classes} score columns")
    present = np.unique(y)
    pred = s.argmax(axis=1)
    out = {"accuracy": accuracy_score(y, pred, sample_weight=w)}
    for avg, labels in (("micro", np.arange(n_classes)), ("macro", present)):
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=labels, average=avg, zero_division=0, sample_weight=w
        )
        out.update({f"precision_{avg}": p, f"recall_{avg}": r, f"f1_{avg}": f})
    if len(present) >= 2:
        onehot = (y[:, None] == present[None, :]).astype(int)
        out["roc_auc_micro"] = roc_auc_score(onehot, s[:, present], average="micro", sample_weight=w)
        out["roc_auc_macro"] = roc_auc_score(onehot, s[:, present], average="macro", sample_weight=w)
    else:
        out["roc_auc_micro"] = out["roc_auc_macro"] = float("nan")
    skipped = [names[c] for c in range(n_classes) if c not in set(present.tolist())]
    return ClassificationResult({k: float(v) for k, v in out.items()}, skipped)


# ---- the same metrics on many weightings at once (bootstrap draws) ------------------------------------------
METRICS = (
    "accuracy", "precision_micro", "recall_micro", "f1_micro", "precision_macro", "recall_macro", "f1_macro",
    "roc_auc_micro", "roc_auc_macro",
)  # fmt: skip  # the keys of `classification_metrics`, in its order
_CELLS = 1 << 24  # score bins x draws held at once per array (128 MiB of float64)


def _grouped(rows: np.ndarray, groups: np.ndarray, n_rows: int, n_groups: int):
    """Sparse [n_rows, n_groups] counts of the items (row, group) (duplicates summed)."""
    from scipy import sparse

    return sparse.csr_matrix((np.ones(len(rows)), (rows, groups)), shape=(n_rows, n_groups))


def _auc_parts(
    pos: np.ndarray, pos_groups: np.ndarray, neg: np.ndarray, neg_groups: np.ndarray, weights_t: np.ndarray
) -> np.ndarray:
    """Sum over (positive, negative) pairs of w_pos w_neg ([s_pos > s_neg] + 1/2 [s_pos = s_neg]): [B], for the
    group weights `weights_t` [G, B]. Divided by (sum w_pos)(sum w_neg) this is the weighted ROC-AUC (the
    Mann-Whitney form of the trapezoidal area scikit-learn computes).

    With v_0 < ... < v_{m-1} the distinct positive scores, a negative lies strictly below v_j when
    #{v <= s_neg} <= j and ties v_j when s_neg = v_j; so only m + 1 bins of negative weight are accumulated."""
    values, pos_bin = np.unique(pos, return_inverse=True)
    m, n_groups = len(values), weights_t.shape[0]
    below = np.searchsorted(values, neg, side="left")  # #{v < s_neg}
    tied = np.zeros(len(neg), dtype=bool)
    inside = below < m
    tied[inside] = values[below[inside]] == neg[inside]
    a_pos = _grouped(pos_bin, pos_groups, m, n_groups)
    a_strict = _grouped(below + tied, neg_groups, m + 1, n_groups)  # key <= j: strictly below v_j
    a_tie = _grouped(below[tied], neg_groups[tied], m, n_groups)
    out = np.empty(weights_t.shape[1])
    step = max(1, _CELLS // (m + 1))
    for lo in range(0, weights_t.shape[1], step):
        w = weights_t[:, lo : lo + step]
        strict = np.cumsum(a_strict @ w, axis=0)[:m]  # [m, b]: negative weight strictly below each v_j
        out[lo : lo + step] = np.einsum("jb,jb->b", a_pos @ w, strict + 0.5 * (a_tie @ w))
    return out


def metric_draws(
    y_true: np.ndarray, scores: np.ndarray, groups: np.ndarray, group_weights: np.ndarray
) -> np.ndarray:
    """`classification_metrics` for many weightings at once: [B, len(METRICS)].

    Row b equals `classification_metrics(y_true, scores, sample_weight=group_weights[b][groups])` (up to float
    rounding): `groups` [N] gives each sample's group 0..G-1 (its case) and `group_weights` [B, G] how often each
    group was drawn (a cluster bootstrap). Macro metrics and ROC-AUC run over the classes present in draw b, as
    there. Cost: O(B x N x C) in sparse products and cumulative sums, against B sorts of N x C scores for a loop.
    """
    y = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups, dtype=np.int64)
    w = np.asarray(group_weights, dtype=np.float64)
    n, n_classes = s.shape
    if y.shape != (n,) or g.shape != (n,) or w.ndim != 2 or (n and g.max() >= w.shape[1]):
        raise ValueError(
            f"parameters disagree: y_true {y.shape}, scores {s.shape}, groups {g.shape}, group_weights {w.shape}"
        )
    pred = s.argmax(axis=1)
    n_g = w.shape[1]
    w_t = np.ascontiguousarray(w.T)  # [G, B]
    true_w = (_grouped(y, g, n_classes, n_g) @ w_t).T  # [B, C] weight of each true class
    pred_w = (_grouped(pred, g, n_classes, n_g) @ w_t).T
    hit = y == pred
    tp = (_grouped(y[hit], g[hit], n_classes, n_g) @ w_t).T
    total = true_w.sum(axis=1)
    present = true_w > 0
    n_present = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = tp.sum(axis=1) / total
        precision = np.where(pred_w > 0, tp / np.where(pred_w > 0, pred_w, 1), 0.0)
        recall = tp / np.where(present, true_w, 1)
        f1 = 2 * tp / np.where(present, true_w + pred_w, 1)
    macro = [np.where(present, m, 0).sum(axis=1) / n_present for m in (precision, recall, f1)]
    # ROC-AUC, one-vs-rest over the present classes. Macro: class c's own column. Micro: one ranking of the
    # flattened present columns, i.e. all positives (each row at its true class's score) against the negatives
    # of every present column: computed once over the columns of every class seen, then the columns of
    # classes absent from a draw are taken out of that draw (one cumulative sum over ~N bins instead of C).
    own = s[np.arange(n), y]
    seen = np.flatnonzero(np.bincount(y, minlength=n_classes))
    neg_w = total[:, None] - true_w
    micro_neg = np.where(present, neg_w, 0.0).sum(axis=1)
    auc_macro, micro_num = np.zeros(len(w)), np.zeros(len(w))
    if len(seen) >= 2:  # else every draw has one class: ROC-AUC is undefined (NaN below)
        rows, cols = np.nonzero(y[:, None] != seen[None, :])
        micro_num = _auc_parts(own, g, s[rows, seen[cols]], g[rows], w_t)
        for c in seen:
            is_c = y == c
            neg, neg_g = s[~is_c, c], g[~is_c]
            with np.errstate(invalid="ignore", divide="ignore"):
                auc = _auc_parts(s[is_c, c], g[is_c], neg, neg_g, w_t) / (true_w[:, c] * neg_w[:, c])
            auc_macro += np.where(present[:, c], auc, 0.0)
            absent = np.flatnonzero(~present[:, c])
            if len(absent):
                micro_num[absent] -= _auc_parts(own, g, neg, neg_g, w_t[:, absent])
    two = n_present >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        roc_micro = np.where(two, micro_num / (total * micro_neg), np.nan)
        roc_macro = np.where(two, auc_macro / n_present, np.nan)
    # single-label data: micro precision = recall = F1 = accuracy (over all classes)
    return np.column_stack([accuracy, accuracy, accuracy, accuracy, *macro, roc_micro, roc_macro])
