"""`metric_draws` (every bootstrap weighting at once) against a loop of `classification_metrics` (scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
from cbmir.classification import METRICS, classification_metrics, fast_classification_metrics, metric_draws


def _problem(seed: int, discrete: bool, n: int = 60, n_classes: int = 5, n_groups: int = 18):
    """Labels with one rare class (absent from many draws), kNN-like shares (many ties) or continuous scores,
    and draws of the groups with replacement."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, n)
    y = rng.integers(0, n_classes - 1, n)
    y[groups == 0] = n_classes - 1  # the rare class lives in one group only
    if discrete:
        k = 7
        votes = rng.integers(0, n_classes, (n, k))
        votes[:, :2] = y[:, None]  # informative, not perfect
        scores = np.stack([(votes == c).mean(axis=1) for c in range(n_classes)], axis=1)
    else:
        scores = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y]
        scores[::7] = np.round(scores[::7], 1)  # some ties
    draws = rng.integers(0, n_groups, (40, n_groups))
    weights = np.stack([np.bincount(d, minlength=n_groups) for d in draws]).astype(float)
    return y, scores, groups, weights


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_draw_equals_classification_metrics_with_those_weights(seed, discrete):
    y, scores, groups, weights = _problem(seed, discrete)
    fast = metric_draws(y, scores, groups, weights)
    assert fast.shape == (len(weights), len(METRICS))
    absent = 0
    for b, wg in enumerate(weights):
        ref = classification_metrics(y, scores, sample_weight=wg[groups]).metrics
        assert list(ref) == list(METRICS)
        np.testing.assert_allclose(fast[b], list(ref.values()), rtol=1e-12, atol=1e-12)
        absent += wg[0] == 0
    assert 0 < absent < len(weights)  # the rare class is absent from some draws and present in others


def test_one_present_class_gives_nan_roc_auc_as_the_loop_does():
    y, scores, _, _ = _problem(3, False)
    y1, s1 = y[y == 0], scores[y == 0]  # one class only: ROC-AUC is undefined
    fast = metric_draws(y1, s1, np.zeros(len(y1), dtype=int), np.array([[3.0]]))
    ref = classification_metrics(y1, s1, sample_weight=np.full(len(y1), 3.0)).metrics
    assert np.isnan(fast[0, -2:]).all() and np.isnan([ref["roc_auc_micro"], ref["roc_auc_macro"]]).all()
    np.testing.assert_allclose(fast[0, :-2], list(ref.values())[:-2], rtol=1e-12)


def test_disagreeing_shapes_are_named():
    y, scores, groups, weights = _problem(0, True)
    with pytest.raises(ValueError, match="group_weights"):
        metric_draws(y, scores, groups, weights[:, :3])


@pytest.mark.parametrize("discrete", [True, False])
def test_fast_classification_metrics_equal_scikit_learns(discrete):
    y, scores, _, _ = _problem(4, discrete)
    names = [f"c{c}" for c in range(scores.shape[1] + 1)]
    scores = np.column_stack([scores, np.zeros(len(y))])  # a class no test sample has: skipped, as there
    ref, fast = classification_metrics(y, scores, names), fast_classification_metrics(y, scores, names)
    assert list(fast.metrics) == list(ref.metrics) and fast.skipped_classes == ref.skipped_classes
    assert "c5" in fast.skipped_classes
    np.testing.assert_allclose(
        list(fast.metrics.values()), list(ref.metrics.values()), rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="'classes' has 2 names for 6 score columns"):
        fast_classification_metrics(y, scores, names[:2])
    with pytest.raises(ValueError, match="non-finite"):
        fast_classification_metrics(y, np.where(scores > 0.5, np.nan, scores))


def test_draws_leave_torchs_thread_count_as_they_found_it():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        metric_draws(*_problem(0, False))
        assert torch.get_num_threads() == 2  # the passes run torch on one thread each, then restore it
    finally:
        torch.set_num_threads(before)
