"""Linear probe: one `nn.Linear` on frozen embeddings, as in the paper.

AdamW (lr 1e-3, weight decay 0.01), batch 512, at most 100 epochs, early stopping with patience 20 on
validation accuracy (ties broken by validation loss); the weights of the best validation epoch are kept. Seeded and CPU-friendly: embeddings
are held as one float32 tensor and batches are index slices (no DataLoader workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cbmir.classification import ClassificationResult, classification_metrics
from cbmir.metrics import encode_labels
from cbmir.progress import hide_progress

SMALL_PROBLEM = 2_000_000  # training matrices with fewer elements train single-threaded


@dataclass
class ProbeResult:
    """Trained layer, per-epoch history, test scores (softmax) [Q, C] and test metrics."""

    model: object  # torch.nn.Linear
    history: pd.DataFrame
    best_epoch: int
    classes: np.ndarray
    test_scores: np.ndarray
    test_labels: np.ndarray
    result: ClassificationResult


def train_linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    n_classes: int,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 512,
    max_epochs: int = 100,
    patience: int = 20,
    seed: int = 0,
    progress: bool = True,
):
    """Train the probe; returns (best `nn.Linear`, history DataFrame(epoch, train_loss, val_accuracy, val_loss), best epoch).

    With `x_val=None` there is no early stopping: the layer trains exactly `max_epochs` epochs and the last is kept
    (validation columns NaN); used to refit on all training rows for an epoch count chosen elsewhere.
    """
    import torch

    for name, value in (("batch_size", batch_size), ("max_epochs", max_epochs), ("patience", patience)):
        if value < 1:
            raise ValueError(f"parameter {name!r} = {value} must be >= 1")
    xt = torch.as_tensor(np.asarray(x_train, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    fixed = x_val is None
    if fixed:
        x_val, y_val = np.zeros((1, xt.shape[1]), np.float32), np.zeros(1, np.int64)
    xv = torch.as_tensor(np.asarray(x_val, dtype=np.float32))
    yv = torch.as_tensor(np.asarray(y_val, dtype=np.int64))
    if len(xt) == 0 or len(xv) == 0:
        raise ValueError("parameters 'x_train' and 'x_val' must not be empty")
    if len(xt) != len(yt) or len(xv) != len(yv) or xt.shape[1] != xv.shape[1]:
        raise ValueError(
            f"shapes disagree: x_train {tuple(xt.shape)}, y_train {tuple(yt.shape)}, x_val {tuple(xv.shape)}"
        )
    threads = torch.get_num_threads()
    if xt.numel() < SMALL_PROBLEM:  # tiny matrix products: extra threads only add synchronisation
        torch.set_num_threads(1)
    try:
        return _train(
            xt,
            yt,
            xv,
            yv,
            n_classes,
            fixed,
            lr,
            weight_decay,
            batch_size,
            max_epochs,
            patience,
            seed,
            progress,
        )
    finally:
        torch.set_num_threads(threads)


def _train(
    xt, yt, xv, yv, n_classes, fixed, lr, weight_decay, batch_size, max_epochs, patience, seed, progress
):
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(xt.shape[1], n_classes)
    opt = adamw(model, lr, weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = torch.empty(min(batch_size, len(xt)), xt.shape[1])  # reused: one gather per step, no allocation
    best_acc, best_loss, best_epoch, best_state, history = -1.0, float("inf"), 0, None, []
    for epoch in tqdm(
        range(1, max_epochs + 1), desc="linear probe", disable=hide_progress(progress), leave=False
    ):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            xb = torch.index_select(xt, 0, idx, out=batch[: len(idx)])
            total += train_step(model, opt, xb, yt[idx]) * len(idx)
        total = float(total)
        model.eval()
        if fixed:
            history.append((epoch, total / len(xt), float("nan"), float("nan")))
            best_epoch, best_state = epoch, model.state_dict()
            continue
        with torch.no_grad():
            logits = model(xv)
            acc = float((logits.argmax(dim=1) == yv).float().mean())
            val_loss = float(loss_fn(logits, yv))
        history.append((epoch, total / len(xt), acc, val_loss))
        # Better = higher val accuracy; equal accuracy with lower val loss also counts (a small val set saturates
        # its accuracy within an epoch or two, and keeping the first such epoch would keep an untrained layer).
        if acc > best_acc or (acc == best_acc and val_loss < best_loss):
            best_acc, best_loss, best_epoch = acc, val_loss, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return (
        model.eval(),
        pd.DataFrame(history, columns=["epoch", "train_loss", "val_accuracy", "val_loss"]),
        best_epoch,
    )


def adamw(model, lr: float, weight_decay: float):
    """`torch.optim.AdamW` over the layer's parameters; the fused kernel where this torch build has it (same update)."""
    import torch

    try:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # a build without the fused CPU kernel
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def train_step(model, opt, xb, yb):
    """One optimiser step of mean cross-entropy on the batch (xb, yb); returns the batch's loss (0-d tensor).

    The gradient of a linear layer under softmax cross-entropy is written out, (softmax - one-hot) / B times the
    inputs, instead of taken by autograd: the same gradient in two matrix products, without autograd's
    bookkeeping, which at batch 512 costs as much as the products themselves. `tests/test_classification.py`
    checks it against autograd with `nn.CrossEntropyLoss`.
    """
    import torch

    w, b = model.weight, model.bias
    with torch.no_grad():
        logp = torch.log_softmax(torch.addmm(b, xb, w.t()), dim=1)
        rows = torch.arange(len(yb))
        loss = -logp[rows, yb].mean(dtype=torch.float64)
        grad = logp.exp_()
        grad[rows, yb] -= 1.0
        grad /= len(yb)
        w.grad = grad.t().mm(xb)
        b.grad = grad.sum(dim=0)
    opt.step()
    return loss


def linear_probe(
    embeddings: np.ndarray,
    row_labels: Sequence[str] | np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    test_rows: np.ndarray,
    *,
    embedding_rows: np.ndarray | None = None,
    **kwargs,
) -> ProbeResult:
    """Train on `train_rows`, stop on `val_rows`, score `test_rows` (manifest rows); kwargs to `train_linear_probe`.

    `embeddings` has one row per manifest row unless `embedding_rows` maps manifest rows to its rows.
    Classes are all labels of `row_labels` (so the score columns match the kNN scores).
    """
    import torch

    classes, codes = encode_labels(row_labels)
    mapping = np.arange(len(codes)) if embedding_rows is None else np.asarray(embedding_rows, dtype=np.int64)
    parts = {}
    for name, rows in (("train_rows", train_rows), ("val_rows", val_rows), ("test_rows", test_rows)):
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise ValueError(f"parameter {name!r} is empty")
        if (mapping[rows] < 0).any():
            raise ValueError(
                f"parameter {name!r}: manifest row {rows[mapping[rows] < 0][0]} has no embedding"
            )
        parts[name] = (np.asarray(embeddings[mapping[rows]], dtype=np.float32), codes[rows])
    (xt, yt), (xv, yv), (xs, ys) = parts.values()
    model, history, best_epoch = train_linear_probe(xt, yt, xv, yv, len(classes), **kwargs)
    with torch.no_grad():
        scores = torch.softmax(model(torch.as_tensor(xs)), dim=1).numpy().astype(np.float64)
    return ProbeResult(
        model, history, best_epoch, classes, scores, ys, classification_metrics(ys, scores, classes)
    )
