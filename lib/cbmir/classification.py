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
