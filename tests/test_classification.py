"""Classification metrics, kNN classification and the linear probe."""

from __future__ import annotations

import numpy as np
import pytest
from cbmir.classification import classification_metrics
from cbmir.knn import f1_by_k, knn_classification, knn_scores
from cbmir.probe import linear_probe, train_linear_probe
from cbmir.search import Neighbours


def test_classification_metrics_hand_case_and_skipped_class():
    y = np.array([0, 0, 1, 1])
    scores = np.array([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.2, 0.8, 0.0], [0.3, 0.7, 0.0]])
    res = classification_metrics(y, scores, ["a", "b", "c"])
    assert res.skipped_classes == ["c"]
    m = res.metrics
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1_micro"] == pytest.approx(0.75)  # single-label: micro F1 = accuracy
    # class a: P = 1, R = 0.5; class b: P = 2/3, R = 1
    assert m["precision_macro"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["recall_macro"] == pytest.approx(0.75)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    # class a scores: positives 0.9, 0.4 vs negatives 0.2, 0.3 -> AUC 1
    assert m["roc_auc_macro"] == pytest.approx(1.0)
    assert res.to_frame().shape == (1, len(m) + 1)
    with pytest.raises(ValueError, match="'classes'"):
        classification_metrics(y, scores, ["a", "b"])


def test_knn_scores_and_f1_curve_match_a_loop():
    rng = np.random.default_rng(0)
    nb = rng.integers(0, 4, (50, 9))
    y = rng.integers(0, 4, 50)
    curve = f1_by_k(nb, y, 4, range(1, 10))
    for k in range(1, 10):
        want = np.array([[np.mean(nb[i, :k] == c) for c in range(4)] for i in range(50)])
        got = knn_scores(nb, k, 4)
        np.testing.assert_allclose(got, want, atol=1e-12)
        assert curve.loc[curve.k == k, "f1_micro"].item() == pytest.approx(np.mean(want.argmax(1) == y))


def test_knn_classification_uses_same_k_on_test_by_default():
    labels = np.array(["a"] * 6 + ["b"] * 6, dtype=object)  # rows 0-5: a, 6-11: b
    # val queries 0 (a) and 6 (b): best with k = 3 (first neighbour misleading, next two correct)
    val = Neighbours([0, 6], [[7, 1, 2, 8], [1, 7, 8, 2]], np.zeros((2, 4)))
    test = Neighbours([3, 9], [[4, 5, 10, 11], [10, 11, 4, 5]], np.zeros((2, 4)))
    res = knn_classification(val, test, labels)
    assert (res.k_val, res.k_test) == (3, 3)
    # ties go to the first class ("a"): k = 2 and 4 get query 0 right, query 6 wrong
    assert res.val_curve["f1_micro"].tolist() == [0.0, 0.5, 1.0, 0.5]
    np.testing.assert_allclose(res.test_scores, [[2 / 3, 1 / 3], [1 / 3, 2 / 3]])
    assert res.result.metrics["accuracy"] == 1.0
    paper = knn_classification(val, test, labels, paper_k_minus_one=True)
    assert (paper.k_val, paper.k_test) == (3, 2)


def separable(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)) * 4
    y = rng.integers(0, 3, n)
    return (centres[y] + rng.normal(size=(n, 8))).astype(np.float32), y


def test_probe_learns_separable_data_and_is_deterministic():
    x, y = separable(0)
    kwargs = {"max_epochs": 30, "patience": 5, "batch_size": 64, "lr": 1e-2, "seed": 1, "progress": False}
    m1, h1, e1 = train_linear_probe(x[:200], y[:200], x[200:], y[200:], 3, **kwargs)
    m2, h2, e2 = train_linear_probe(x[:200], y[:200], x[200:], y[200:], 3, **kwargs)
    assert h1["val_accuracy"].max() >= 0.95
    assert e1 == e2
    assert h1.equals(h2)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert (a == b).all()


def reference_probe(x, y, n_classes, epochs, batch_size, seed, lr=1e-2, weight_decay=0.01):
    """The probe's training loop written the plain way: nn.Linear, nn.CrossEntropyLoss, autograd, AdamW."""
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = torch.nn.CrossEntropyLoss()(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(xt))
    return model, losses


def test_probe_training_matches_autograd_and_plain_adamw():
    x, y = separable(4, n=230)  # 230 rows at batch 64: the last batch is short (38 rows)
    model, history, _ = train_linear_probe(
        x, y, None, None, 3, max_epochs=6, batch_size=64, lr=1e-2, seed=3, progress=False
    )
    ref, losses = reference_probe(x, y, 3, epochs=6, batch_size=64, seed=3)
    np.testing.assert_allclose(history["train_loss"], losses, rtol=1e-5)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-4, atol=1e-6)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] / 2  # it trained


def test_linear_probe_on_manifest_rows():
    x, y = separable(2)
    labels = np.array(["CT/a/x", "CT/b/y", "MR/c/z"], dtype=object)[y]
    rows = np.arange(len(y))
    res = linear_probe(
        x,
        labels,
        rows[:200],
        rows[200:250],
        rows[250:],
        max_epochs=20,
        patience=5,
        lr=1e-2,
        batch_size=32,
        progress=False,
    )
    assert res.test_scores.shape == (50, 3)
    np.testing.assert_allclose(res.test_scores.sum(1), 1, atol=1e-5)
    assert res.result.metrics["accuracy"] >= 0.95
    h = res.history
    best = h[h["val_accuracy"] == h["val_accuracy"].max()].sort_values(["val_loss", "epoch"]).iloc[0]
    assert res.best_epoch == int(best["epoch"])  # highest val accuracy, ties by lowest val loss


def test_probe_on_a_tiny_val_set_keeps_training_while_val_loss_falls():
    from cbmir.probe import train_linear_probe

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    y = rng.integers(0, 3, 300)
    x = (centres[y] + rng.normal(size=(300, 16))).astype(np.float32)
    # 3 val images: accuracy reaches 1.0 almost at once; the first such epoch holds a barely trained layer
    _, history, best_epoch = train_linear_probe(
        x[:297], y[:297], x[297:], y[297:], 3, max_epochs=30, patience=30, batch_size=64, progress=False
    )
    first_perfect = int(history.loc[history["val_accuracy"].idxmax(), "epoch"])
    assert best_epoch > first_perfect
    assert (
        history.loc[best_epoch - 1, "val_loss"] == history["val_loss"][history["val_accuracy"] == 1.0].min()
    )
