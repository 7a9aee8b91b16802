"""Classification metrics for kNN and linear-probe scores (scikit-learn).

Single-label, multi-class: the prediction is the arg-max of the class scores. Micro averages run over all
classes (for single-label data micro precision = recall = F1 = accuracy). Macro averages and ROC-AUC run over
the classes present in `y_true`; classes with no test sample are skipped and listed in `skipped_classes`.
ROC-AUC is one-vs-rest on the scores; it is NaN when fewer than two classes are present.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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

    y, s = _checked(y_true, scores)
    n_classes = s.shape[1]
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w is not None:
        if w.shape != y.shape or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(
                "parameter 'sample_weight' must hold one finite weight >= 0 per sample, not all 0"
            )
        y, s, w = y[w > 0], s[w > 0], w[w > 0]
    names = _names(classes, n_classes)
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


def _checked(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [N], scores float64 [N, C]), or ValueError naming what is wrong."""
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
    return y, s


def _names(classes: Sequence[str] | None, n_classes: int) -> list[str]:
    names = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"parameter 'classes' has {len(names)} names for {n_classes} score columns")
    return names


def fast_classification_metrics(
    y_true: np.ndarray, scores: np.ndarray, classes: Sequence[str] | None = None
) -> ClassificationResult:
    """`classification_metrics` (unweighted) computed by `metric_draws` with one weighting of ones: the same
    values to float rounding (tests/test_metric_draws.py), without scikit-learn's sort of all N x C scores (at
    the paper's size about 7 s instead of 40 s)."""
    y, s = _checked(y_true, scores)
    names = _names(classes, s.shape[1])
    values = metric_draws(y, s, np.zeros(len(y), dtype=np.int64), np.ones((1, 1)))[0]
    present = set(np.unique(y).tolist())
    skipped = [names[c] for c in range(s.shape[1]) if c not in present]
    return ClassificationResult({k: float(v) for k, v in zip(METRICS, values, strict=True)}, skipped)


# ---- the same metrics on many weightings at once (bootstrap draws) ------------------------------------------
METRICS = (
    "accuracy", "precision_micro", "recall_micro", "f1_micro", "precision_macro", "recall_macro", "f1_macro",
    "roc_auc_micro", "roc_auc_macro",
)  # fmt: skip  # the keys of `classification_metrics`, in its order
_DRAWS_PER_PASS = 16  # draws per pass over the scores: a pass's [groups x draws] weights stay in cache
_THREADS = 8  # passes at once, each with its own [bins x draws] buffers


def _grouped(rows: np.ndarray, groups: np.ndarray, n_rows: int, n_groups: int):
    """Sparse [n_rows, n_groups] counts of the items (row, group) (duplicates summed), as a torch CSR tensor: its
    product with a few columns of weights runs about twice as fast per thread as scipy's. Every product of the
    draws is a sum of integer counts times integer weights, so exact in float64 in any order."""
    import torch
    from scipy import sparse

    counts = sparse.csr_matrix((np.ones(len(rows)), (rows, groups)), shape=(n_rows, n_groups))
    index = np.int32 if counts.nnz < 2**31 else np.int64
    with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(counts.indptr.astype(index)),
            torch.from_numpy(counts.indices.astype(index)),
            torch.from_numpy(counts.data),
            size=counts.shape,
        )


def _times(counts, w: np.ndarray) -> np.ndarray:
    """`counts` (from `_grouped`) @ `w` [n_groups, b] as a float64 array [n_rows, b]."""
    import torch

    return (counts @ torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64))).numpy()


@dataclass
class _Ranking:
    """Positive and negative scores of one ROC curve, binned at the m distinct positive scores
    v_0 < ... < v_{m-1}: a negative lies strictly below v_j when #{v <= s_neg} <= j and ties v_j when
    s_neg = v_j, so only m + 1 bins of negative weight are needed (the Mann-Whitney form of the trapezoidal
    area scikit-learn computes)."""

    values: np.ndarray  # [m] the distinct positive scores, ascending
    pos: Any  # [m, G] sparse counts (`_grouped`) of positives per (bin, group)
    strict: Any  # [m + 1, G] negatives per (#{v <= s_neg}, group)
    tie: Any  # [m, G] negatives tied with v_j

    @classmethod
    def of(
        cls, pos: np.ndarray, pos_groups: np.ndarray, neg: np.ndarray, neg_groups: np.ndarray, n_groups: int
    ):
        values, pos_bin = np.unique(pos, return_inverse=True)
        below, tied = _bins(values, neg)
        m = len(values)
        return cls(
            values,
            _grouped(pos_bin, pos_groups, m, n_groups),
            _grouped(below + tied, neg_groups, m + 1, n_groups),
            _grouped(below[tied], neg_groups[tied], m, n_groups),
        )

    def pairs(self, w: np.ndarray, pos_w: np.ndarray | None = None) -> np.ndarray:
        """Sum over (positive, negative) pairs of w_pos w_neg ([s_pos > s_neg] + 1/2 [s_pos = s_neg]): [b],
        for the group weights `w` [G, b] (`pos_w` = self.pos @ w when already known)."""
        pos_w = _times(self.pos, w) if pos_w is None else pos_w
        # [m, b]: the negative weight strictly below each v_j
        strict = np.cumsum(_times(self.strict, w), axis=0)[:-1]
        return np.einsum("jb,jb->b", pos_w, strict + 0.5 * _times(self.tie, w))


def _bins(values: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(#{v < x}, x in values) for sorted distinct `values`."""
    below = np.searchsorted(values, x, side="left")
    tied = np.zeros(len(x), dtype=bool)
    inside = below < len(values)
    tied[inside] = values[below[inside]] == x[inside]
    return below, tied


@dataclass
class _Column:
    """One class's column as negatives of the micro ranking (all positives at their true class's score): what
    the micro numerator over every seen class must lose in the draws where the class is absent. Keys for every
    row: the class's own rows weigh 0 in those draws."""

    key: np.ndarray  # [N] #{v <= s}: the bins of positive values at or below each row's score
    tied_rows: np.ndarray  # rows whose score ties a positive value
    tied_bin: np.ndarray  # that value's bin


def _column_pairs(
    col: _Column, row_w: np.ndarray, row_total: np.ndarray, le: np.ndarray, pos_w: np.ndarray
) -> np.ndarray:
    """`_Ranking.pairs` of the micro positives against one column's rows, for draws where none of the class's
    own rows is drawn, draw-major: `row_w` [b, N] the rows' weights (summing to `row_total` [b]), `le` [b, m + 1]
    the positive weight in the bins before each key, `pos_w` [b, m] per bin. Pairs = sum_j w_j (positive weight
    above s_j + 1/2 tied with s_j)."""
    out = le[:, -1] * row_total - np.einsum("bj,bj->b", row_w, np.take(le, col.key, axis=1))
    if len(col.tied_rows):
        out += 0.5 * np.einsum("bj,bj->b", row_w[:, col.tied_rows], pos_w[:, col.tied_bin])
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
    true_w = _times(_grouped(y, g, n_classes, n_g), w_t).T  # [B, C] weight of each true class
    pred_w = _times(_grouped(pred, g, n_classes, n_g), w_t).T
    hit = y == pred
    tp = _times(_grouped(y[hit], g[hit], n_classes, n_g), w_t).T
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
    seen = np.flatnonzero(np.bincount(y, minlength=n_classes))
    neg_w = total[:, None] - true_w
    micro_neg = np.where(present, neg_w, 0.0).sum(axis=1)
    auc_macro, micro_num = np.zeros(len(w)), np.zeros(len(w))
    if len(seen) >= 2:  # else every draw has one class: ROC-AUC is undefined (NaN below)
        auc_macro, micro_num = _roc_numerators(y, s, g, w_t, seen, present, true_w, neg_w)
    two = n_present >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        roc_micro = np.where(two, micro_num / (total * micro_neg), np.nan)
        roc_macro = np.where(two, auc_macro / n_present, np.nan)
    # single-label data: micro precision = recall = F1 = accuracy (over all classes)
    return np.column_stack([accuracy, accuracy, accuracy, accuracy, *macro, roc_micro, roc_macro])


def _roc_numerators(
    y: np.ndarray,
    s: np.ndarray,
    g: np.ndarray,
    w_t: np.ndarray,
    seen: np.ndarray,
    present: np.ndarray,
    true_w: np.ndarray,
    neg_w: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the present classes' ROC-AUCs [B], micro ROC-AUC numerator [B]) of `metric_draws`.

    The rankings are binned once; then the draws are taken `_DRAWS_PER_PASS` at a time, so each pass's weights
    stay in cache, on up to `_THREADS` threads (the sparse products and reductions release the GIL; torch runs
    each product on its pass's thread)."""
    import torch

    n, n_groups = len(y), w_t.shape[0]
    own = s[np.arange(n), y]
    rows, cols = np.nonzero(y[:, None] != seen[None, :])
    micro = _Ranking.of(own, g, s[rows, seen[cols]], g[rows], n_groups)
    del rows, cols
    macro, columns = {}, {}
    for c in seen:
        is_c = y == c
        macro[c] = _Ranking.of(s[is_c, c], g[is_c], s[~is_c, c], g[~is_c], n_groups)
        if not present[:, c].all():
            below, tied = _bins(micro.values, s[:, c])
            tied_rows = np.flatnonzero(tied)
            columns[c] = _Column(below + tied, tied_rows, below[tied_rows])

    def one_pass(lo: int) -> tuple[np.ndarray, np.ndarray]:
        hi = min(lo + _DRAWS_PER_PASS, w_t.shape[1])
        w = np.ascontiguousarray(w_t[:, lo:hi])
        pos_w = _times(micro.pos, w)
        micro_num = micro.pairs(w, pos_w)
        auc_sum = np.zeros(hi - lo)
        row_w = row_total = le = pos_t = None
        for c in seen:
            with np.errstate(invalid="ignore", divide="ignore"):
                auc = macro[c].pairs(w) / (true_w[lo:hi, c] * neg_w[lo:hi, c])
            here = present[lo:hi, c]
            auc_sum += np.where(here, auc, 0.0)
            if not here.all():  # only the draws without class c (a rare class is absent from few), draw-major
                if row_w is None:
                    row_w = np.take(w.T, g, axis=1)
                    row_total = row_w.sum(axis=1)
                    pos_t = np.ascontiguousarray(pos_w.T)
                    le = np.hstack([np.zeros((hi - lo, 1)), np.cumsum(pos_t, axis=1)])
                absent = np.flatnonzero(~here)
                micro_num[absent] -= _column_pairs(
                    columns[c], row_w[absent], row_total[absent], le[absent], pos_t[absent]
                )
        return auc_sum, micro_num

    starts = range(0, w_t.shape[1], _DRAWS_PER_PASS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the passes run in parallel instead
    try:
        with ThreadPoolExecutor(max_workers=min(_THREADS, os.cpu_count() or 1)) as pool:
            parts = list(pool.map(one_pass, starts))
    finally:
        torch.set_num_threads(threads)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
