"""Classification study: kNN classification and the linear probe on frozen embeddings, with case-level CIs.

Inputs are arrays with one entry per image: an embedding matrix, string labels, the split of each row
("train" = the index / training rows, "val", "test" = the queries) and its case (patient; see
`cbmir.analyses.data.case_ids`; `None` = every row its own case).

**Selection rule** (`selection=`):
- `"val"` (the paper's): k is the smallest k with the best micro-F1 of the val queries against the train index;
  the probe keeps the weights of its best val epoch (val accuracy, ties by val loss; patience 20, <= 100 epochs).
- `"grouped-cv"`: k is chosen by micro-F1 of patient-grouped cross-validation on the train rows (scikit-learn
  `StratifiedGroupKFold`, `n_splits` folds; each train row is classified once by the rows of the other folds,
  and no case is on both sides of a fold); the probe early-stops on a patient-grouped hold-out of the train
  rows (one fold of `round(1 / holdout_fraction)`), then is refitted on all train rows for the chosen number
  of epochs (`refit=True`), so that classes whose only cases fell in the hold-out are still learnt.
- `"auto"`: `"val"` when every class present in test has at least `min_val_cases` (default 2) distinct val
  cases, else `"grouped-cv"`. The outcome says which rule ran and why (`rule`, `reason`).

The probe standardises every feature with the mean and standard deviation of the rows it is trained on
(features with zero spread are only centred). Test neighbours of the kNN never come from the query's own
case (a no-op when splits are patient-disjoint). Every kNN search (k selection and test) uses the index
`index_type` of `cbmir.search` (default: exact search). Metrics (`cbmir.classification`) are computed on the
test rows; `classification_ci` gives percentile intervals from a cluster bootstrap over test cases.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cbmir.classification import (
    ClassificationResult,
    fast_classification_metrics,
    metric_draws,
)
from cbmir.errors import CbmirError
from cbmir.search import Neighbours, check_index_params, reuse_index, search
from cbmir.store import release_pages

SELECTIONS = ("val", "grouped-cv", "auto")
MIN_VAL_CASES = 2
PAPER_K_MAX = 100


class ClassifyError(CbmirError, ValueError):
    """Inputs of the classification study that disagree or cannot support the requested rule."""


# ---- inputs -------------------------------------------------------------------------------------------
@dataclass
class _Data:
    x: np.ndarray
    classes: np.ndarray
    y: np.ndarray
    splits: np.ndarray
    cases: np.ndarray

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)


def _prepare(embeddings, labels, splits, cases) -> _Data:
    x = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    splits = np.asarray(splits).astype(str)
    n = len(labels)
    if x.ndim != 2 or len(x) != n or len(splits) != n:
        raise ClassifyError(
            f"parameters disagree: 'embeddings' {x.shape}, 'labels' {labels.shape}, 'splits' {splits.shape}"
        )
    for lo in range(0, n, STANDARDISE_CHUNK):  # a chunk at a time: no [N, D] mask, no mapped pages kept
        finite = np.isfinite(x[lo : lo + STANDARDISE_CHUNK]).all(axis=1)
        if not finite.all():
            raise ClassifyError(
                f"parameter 'embeddings': row {lo + int(np.flatnonzero(~finite)[0])} is not finite"
            )
        release_pages(embeddings)  # nothing for an array that is not a memmap
    cases = np.arange(n) if cases is None else pd.factorize(pd.Series(np.asarray(cases)))[0]
    if len(cases) != n:
        raise ClassifyError(f"parameter 'cases' has {len(cases)} entries for {n} rows")
    for split in ("train", "test"):
        if not (splits == split).any():
            raise ClassifyError(f"parameter 'splits' has no {split!r} rows")
    classes, y = np.unique(labels, return_inverse=True)
    return _Data(x, classes, y.astype(np.int64), splits, np.asarray(cases, dtype=np.int64))


def absent_classes(labels: np.ndarray, splits: np.ndarray) -> dict[str, list[str]]:
    """Classes (of all labels) with no image in val and in test: {"val": [...], "test": [...]}."""
    labels, splits = np.asarray(labels).astype(str), np.asarray(splits).astype(str)
    every = np.unique(labels)
    return {s: sorted(set(every) - set(labels[splits == s])) for s in ("val", "test")}


def val_support(labels: np.ndarray, splits: np.ndarray, cases: np.ndarray | None = None) -> pd.DataFrame:
    """For each class present in test: `class, test images, test cases, val images, val cases`."""
    labels, splits = np.asarray(labels).astype(str), np.asarray(splits).astype(str)
    cases = np.arange(len(labels)) if cases is None else np.asarray(cases)
    frame = pd.DataFrame({"class": labels, "split": splits, "case": cases})
    out = pd.DataFrame({"class": sorted(set(labels[splits == "test"]))})
    for split in ("test", "val"):
        part = frame[frame["split"] == split].groupby("class")
        out[f"{split} images"] = out["class"].map(part.size()).fillna(0).astype(np.int64)
        out[f"{split} cases"] = out["class"].map(part["case"].nunique()).fillna(0).astype(np.int64)
    return out


def choose_rule(
    selection: str,
    labels: np.ndarray,
    splits: np.ndarray,
    cases: np.ndarray | None,
    min_val_cases: int = MIN_VAL_CASES,
) -> tuple[str, str]:
    """(rule that runs, a sentence saying why) for `selection` in "val" | "grouped-cv" | "auto"."""
    if selection not in SELECTIONS:
        raise ClassifyError(f"parameter 'selection' is {selection!r}; allowed {list(SELECTIONS)}")
    if selection == "grouped-cv":
        return "grouped-cv", "selection='grouped-cv'"
    if selection == "val" and not (np.asarray(splits).astype(str) == "val").any():
        raise ClassifyError("selection='val' needs val rows; the data has none (use 'grouped-cv' or 'auto')")
    support = val_support(labels, splits, cases)
    thin = support[support["val cases"] < min_val_cases]
    if selection == "val":
        forced = (
            f"; forced: the automatic rule would not use val, as {len(thin)} test "
            f"{'class has' if len(thin) == 1 else 'classes have'} fewer than {min_val_cases} validation cases"
            if len(thin)
            else ""
        )
        return "val", f"selection='val' (the paper's rule){forced}"
    if thin.empty:
        return "val", f"auto: every test class has at least {min_val_cases} validation cases"
    examples = ", ".join(f"{c}: {n}" for c, n in zip(thin["class"][:3], thin["val cases"][:3], strict=True))
    return "grouped-cv", (
        f"auto: {len(thin)} of {len(support)} test classes have fewer than {min_val_cases} validation cases "
        f"({examples}{', ...' if len(thin) > 3 else ''}), so selection uses patient-grouped splits of train"
    )


def grouped_folds(y: np.ndarray, cases: np.ndarray, n_splits: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Held-out positions of each fold of a stratified, case-grouped K-fold.

    K = min(n_splits, cases, images of the largest class) (scikit-learn needs a class with K members).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n_cases = len(np.unique(cases))
    # StratifiedGroupKFold refuses more folds than the largest class has members
    k = min(n_splits, n_cases, int(np.bincount(pd.factorize(pd.Series(np.asarray(y)))[0]).max()))
    if k < 2:
        raise ClassifyError(f"grouped selection needs at least 2 cases in train; it has {n_cases}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # "least populated class has only n members": expected here
        return [held for _, held in splitter.split(np.zeros(len(y)), y, groups=cases)]


# ---- kNN ----------------------------------------------------------------------------------------------
def knn_predictions(neighbour_codes: np.ndarray, n_classes: int, ks: Sequence[int]) -> np.ndarray:
    """[len(ks), Q] predicted class for each k: the most frequent class among the first k (ties: lowest code)."""
    nb = np.asarray(neighbour_codes, dtype=np.int64)
    counts = np.zeros((len(nb), n_classes), dtype=np.int64)
    rows = np.arange(len(nb))
    out = np.empty((len(ks), len(nb)), dtype=np.int64)
    wanted = {k: i for i, k in enumerate(ks)}
    for k in range(1, max(ks) + 1):
        counts[rows, nb[:, k - 1]] += 1
        if k in wanted:
            out[wanted[k]] = counts.argmax(axis=1)
    return out


def _f1_curve(y: np.ndarray, predictions: np.ndarray, ks: Sequence[int]) -> pd.DataFrame:
    from sklearn.metrics import f1_score

    return pd.DataFrame(
        {
            "k": list(ks),
            "f1_micro": [f1_score(y, p, average="micro") for p in predictions],
            "f1_macro": [
                f1_score(y, p, average="macro", labels=np.unique(y), zero_division=0) for p in predictions
            ],
        }
    )


def _best_k(curve: pd.DataFrame, criterion: str = "f1_micro") -> int:
    if criterion not in ("f1_micro", "f1_macro"):
        raise ClassifyError(f"parameter 'criterion' is {criterion!r}; allowed ['f1_micro', 'f1_macro']")
    return int(curve["k"].iloc[int(np.argmax(curve[criterion].to_numpy()))])  # first maximum = smallest k


def grouped_cv_curve(
    x: np.ndarray,
    y: np.ndarray,
    cases: np.ndarray,
    n_classes: int,
    k_max: int,
    n_splits: int = 5,
    seed: int = 0,
    index_type: str = "flat",
    index_params: Mapping | None = None,
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Micro- and macro-F1 for k = 1..k_max' of case-grouped cross-validation on (x, y); k_max' fits every fold.

    Returns (DataFrame(k, f1_micro, f1_macro) over the pooled out-of-fold predictions, held-out positions per fold).
    Each fold's search uses the index `index_type` with builder parameters `index_params` (`cbmir.search`).
    """
    folds = grouped_folds(y, cases, n_splits, seed)
    k_top = min(k_max, min(len(y) - len(f) for f in folds))
    ks = list(range(1, k_top + 1))
    pred = np.empty((len(ks), len(y)), dtype=np.int64)
    for held in folds:
        rest = np.setdiff1d(np.arange(len(y)), held)
        pos = _neighbours(x[rest], x[held], k_top, index_type=index_type, index_params=index_params)
        pred[:, held] = knn_predictions(y[rest][pos], n_classes, ks)
    return _f1_curve(y, pred, ks), folds


@dataclass
class Outcome:
    """What a classification head produced on test, and how its setting was chosen."""

    head: str
    rule: str  # "val" or "grouped-cv": the rule that ran
    reason: str
    setting: dict  # {"k": ..., "k (test)": ..., "criterion": ...} or {"epoch": ..., "refit": ...}
    curve: (
        pd.DataFrame
    )  # kNN: k, f1_micro, f1_macro; probe: epoch, train_loss, selection_loss, selection_accuracy
    classes: np.ndarray
    test_labels: np.ndarray  # class codes
    test_scores: np.ndarray  # [Q, C]
    test_cases: np.ndarray
    result: ClassificationResult
    absent: dict[str, list[str]] = field(default_factory=dict)
    train_counts: np.ndarray | None = None  # train images per class code (the prior of `chance_metrics`)
    draws: dict = field(default_factory=dict, repr=False, compare=False)  # (n_boot, seed) -> bootstrap draws

    def row(self, model: str) -> pd.DataFrame:
        """One table row: model, head, rule, setting, metrics, number of test cases and queries, absent classes."""
        row = {"model": model, "head": self.head, "rule": self.rule, **self.setting, **self.result.metrics}
        row["test cases"] = len(np.unique(self.test_cases))
        row["test queries"] = len(self.test_labels)
        row["classes without val images"] = ", ".join(self.absent.get("val", []))
        row["classes without test images"] = ", ".join(self.absent.get("test", []))
        return pd.DataFrame([row])


def knn_classify(
    embeddings: np.ndarray,
    labels: np.ndarray,
    splits: np.ndarray,
    cases: np.ndarray | None = None,
    *,
    selection: str = "auto",
    k_max: int = PAPER_K_MAX,
    n_splits: int = 5,
    min_val_cases: int = MIN_VAL_CASES,
    paper_k_minus_one: bool = False,
    criterion: str = "f1_micro",
    seed: int = 0,
    index_type: str = "flat",
    index_params: Mapping | None = None,
    neighbour_table: Callable[[str], Neighbours | None] | None = None,
    row_ids: np.ndarray | None = None,
) -> Outcome:
    """kNN classification of the test rows against the train rows, k chosen by `selection` (module docstring).

    Both searches (k selection: val or every grouped-CV fold against train; test against train) use the index
    `index_type` with builder parameters `index_params` (`cbmir.search`; "flat" = exact, the default).

    `neighbour_table(split)` ("val" or "test"), when given, returns a stored table of that split's rows against
    the train rows from the same search (same index, same-case neighbours excluded), with ids in the row numbers
    `row_ids` of the inputs (e.g. manifest rows): the pipeline's `Context.neighbours`. A table that holds every
    query row of its split with at least the k needed replaces that search; otherwise the search runs.

    Class scores = share of each class among the first k neighbours; `paper_k_minus_one` applies k - 1 on
    test as the authors' code did. `criterion` = "f1_micro" (the paper's) or "f1_macro" (over the classes of
    the selection rows; micro-F1 on few, large cases can favour a k that always votes the majority class).
    """
    # fail before any work: ValueError naming 'index_type' or the unknown parameter
    check_index_params(index_type, dict(index_params or {}))
    index = {"index_type": index_type, "index_params": index_params}
    d = _prepare(embeddings, labels, splits, cases)
    rule, reason = choose_rule(selection, d.classes[d.y], d.splits, d.cases, min_val_cases)
    train, test = d.rows("train"), d.rows("test")
    n_classes = len(d.classes)
    val = d.rows("val")
    k_top = min(k_max, len(train))
    ids = np.arange(len(d.y)) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    if len(ids) != len(d.y):
        raise ClassifyError(f"parameter 'row_ids' has {len(ids)} entries for {len(d.y)} rows")
    tables = {
        split: neighbour_table(split)
        for split in ("val", "test")
        if neighbour_table is not None and (split == "test" or rule == "val")
    }

    @functools.cache
    def x_train() -> np.ndarray:  # one copy (1.6 M x 768: 4.3 GB), made only for a search
        copy = d.x[train]
        release_pages(embeddings)  # a memmapped input's pages: the copy holds what is needed
        return copy

    with reuse_index():  # the val rule's two searches share one index over the train rows
        if rule == "val":
            ks = list(range(1, k_top + 1))
            pos = _from_table(tables.get("val"), ids, val, train, k_top)
            if pos is None:
                pos = _neighbours(x_train(), d.x[val], k_top, d.cases[train], d.cases[val], **index)
            curve = _f1_curve(d.y[val], knn_predictions(d.y[train][pos], n_classes, ks), ks)
        else:
            curve, _ = grouped_cv_curve(
                x_train(), d.y[train], d.cases[train], n_classes, k_max, n_splits, seed, **index
            )
        k = _best_k(curve, criterion)
        k_test = max(1, k - 1) if paper_k_minus_one else k
        pos = _from_table(tables.get("test"), ids, test, train, k_test)
        if pos is None:
            pos = _neighbours(x_train(), d.x[test], k_test, d.cases[train], d.cases[test], **index)
    release_pages(embeddings)  # the val and test rows were read from a memmapped input after the copy
    scores = np.zeros((len(test), n_classes))
    np.add.at(scores, (np.repeat(np.arange(len(test)), k_test), d.y[train][pos].ravel()), 1.0 / k_test)
    y = d.y[test]
    return Outcome(
        "kNN", rule, reason, {"k": k, "k (test)": k_test, "criterion": criterion}, curve, d.classes, y, scores, d.cases[test],
        fast_classification_metrics(y, scores, d.classes), absent_classes(d.classes[d.y], d.splits),
        np.bincount(d.y[train], minlength=n_classes),
    )  # fmt: skip


# ---- linear probe -------------------------------------------------------------------------------------
STANDARDISE_CHUNK = 65_536  # rows converted to float64 at a time (1.4 M x 768 at once would take 8.6 GB)


def _chunks(
    x: np.ndarray, rows: np.ndarray, chunk_rows: int, release: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """`x[rows]` in float64, `chunk_rows` rows at a time; with `release` (the memmap `x` views; any other array
    is left alone), its pages are released after each chunk, so a pass over 1.6 M x 1000 mapped vectors never
    holds their 6.4 GB resident."""
    for lo in range(0, len(rows), chunk_rows):
        yield np.asarray(x[rows[lo : lo + chunk_rows]], dtype=np.float64)
        if release is not None:
            release_pages(release)


def fit_standardiser(
    x: np.ndarray, rows: np.ndarray | None = None, chunk_rows: int = STANDARDISE_CHUNK,
    release: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(mean, scale) per feature of `x[rows]` (default: all rows); scale = standard deviation, 1 where it is 0.

    Two passes in float64, `chunk_rows` rows at a time, so memory stays at one chunk (`_chunks`: `release`)."""
    rows = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
    total = np.zeros(x.shape[1])
    for part in _chunks(x, rows, chunk_rows, release):
        total += part.sum(axis=0)
    mean = total / len(rows)
    squares = np.zeros(x.shape[1])
    for part in _chunks(x, rows, chunk_rows, release):
        squares += ((part - mean) ** 2).sum(axis=0)
    std = np.sqrt(squares / len(rows))
    return mean, np.where(std > 0, std, 1.0)


def standardise(
    x: np.ndarray, mean: np.ndarray, scale: np.ndarray, rows: np.ndarray | None = None,
    chunk_rows: int = STANDARDISE_CHUNK, release: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """(x[rows] - mean) / scale as float32 (default: all rows), computed in float64 one chunk at a time."""
    rows = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), np.shape(x)[1]), dtype=np.float32)
    lo = 0
    for part in _chunks(x, rows, chunk_rows, release):
        out[lo : lo + len(part)] = ((part - mean) / scale).astype(np.float32)
        lo += len(part)
    return out


def probe_classify(
    embeddings: np.ndarray,
    labels: np.ndarray,
    splits: np.ndarray,
    cases: np.ndarray | None = None,
    *,
    selection: str = "auto",
    standardise_features: bool = True,
    holdout_fraction: float = 0.2,
    refit: bool = True,
    min_val_cases: int = MIN_VAL_CASES,
    seed: int = 0,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 512,
    max_epochs: int = 100,
    patience: int = 20,
    progress: bool = True,
) -> Outcome:
    """Linear probe trained on the train rows, early-stopped by `selection` (module docstring), scored on test.

    `setting` holds the chosen epoch, whether the layer was refitted, and the standardiser's use.
    """
    import torch

    from cbmir.probe import train_linear_probe

    if not 0 < holdout_fraction < 1:
        raise ClassifyError(f"parameter 'holdout_fraction' = {holdout_fraction} must lie between 0 and 1")
    d = _prepare(embeddings, labels, splits, cases)
    rule, reason = choose_rule(selection, d.classes[d.y], d.splits, d.cases, min_val_cases)
    train, test = d.rows("train"), d.rows("test")
    if rule == "val":
        fit_rows, stop_rows = train, d.rows("val")
    else:
        folds = grouped_folds(d.y[train], d.cases[train], max(2, round(1 / holdout_fraction)), seed)
        stop_rows = train[folds[0]]
        fit_rows = np.setdiff1d(train, stop_rows)
    settings = dict(lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed, progress=progress)
    n_classes = len(d.classes)

    def prep(rows_fit):  # `release`: a memmapped input's pages, freed chunk by chunk
        mean, scale = (
            fit_standardiser(d.x, rows_fit, release=embeddings) if standardise_features else (0.0, 1.0)
        )
        return lambda rows: standardise(d.x, mean, scale, rows, release=embeddings)

    z = prep(fit_rows)
    z_fit, z_stop, z_test = z(fit_rows), z(stop_rows), z(test)
    release_pages(embeddings)  # a memmapped input's pages: the standardised copies hold what training needs
    model, history, epoch = train_linear_probe(
        z_fit, d.y[fit_rows], z_stop, d.y[stop_rows], n_classes, max_epochs=max_epochs, patience=patience, **settings,
    )  # fmt: skip
    del z_fit, z_stop
    refitted = rule == "grouped-cv" and refit
    if refitted:
        z = prep(train)
        z_train, z_test = z(train), z(test)
        release_pages(embeddings)
        model, _, _ = train_linear_probe(
            z_train, d.y[train], None, None, n_classes, max_epochs=epoch, **settings
        )
        del z_train
    with torch.no_grad():
        scores = torch.softmax(model(torch.as_tensor(z_test)), dim=1).numpy().astype(np.float64)
    curve = history.rename(columns={"val_loss": "selection_loss", "val_accuracy": "selection_accuracy"})
    curve = curve[["epoch", "train_loss", "selection_loss", "selection_accuracy"]]
    y = d.y[test]
    setting = {"epoch": epoch, "epochs run": len(history), "refit on all train": refitted,
               "standardised": standardise_features, "selection rows": len(stop_rows)}  # fmt: skip
    return Outcome(
        "linear probe", rule, reason, setting, curve, d.classes, y, scores, d.cases[test],
        fast_classification_metrics(y, scores, d.classes), absent_classes(d.classes[d.y], d.splits),
        np.bincount(d.y[train], minlength=n_classes),
    )  # fmt: skip


# ---- case-level bootstrap -----------------------------------------------------------------------------
def bootstrap_draws(
    cases: np.ndarray, statistic: Callable[[np.ndarray], dict[str, float]], n_boot: int = 1000, seed: int = 0
) -> tuple[dict[str, float], np.ndarray, int]:
    """(statistic on all rows, its value on each case resample [n_boot, metrics], number of cases).

    Draw b resamples the distinct cases with replacement: `rng.integers(0, n_cases, (n_boot, n_cases))` with
    `rng = np.random.default_rng(seed)`, cases numbered in order of first appearance. A row's weight is how
    often its case was drawn. The same `cases` and `seed` give the same draws, so two statistics are paired.
    """
    codes, counts = case_draw_counts(cases, n_boot, seed)
    point = statistic(np.ones(len(codes)))
    values = np.array([list(statistic(row[codes]).values()) for row in counts])
    return point, values, counts.shape[1]


def case_draw_counts(cases: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(case code of each row [N], how often draw b drew each case [n_boot, cases] as float64): the draws of
    `bootstrap_draws`."""
    if n_boot < 1:
        raise ClassifyError(f"parameter 'n_boot' = {n_boot} must be >= 1")
    codes = pd.factorize(pd.Series(np.asarray(cases)))[0]
    n_cases = int(codes.max()) + 1
    draws = np.random.default_rng(seed).integers(0, n_cases, (n_boot, n_cases))
    counts = np.stack([np.bincount(draw, minlength=n_cases) for draw in draws]).astype(np.float64)
    return codes, counts


def classification_draws(
    y_true: np.ndarray,
    scores: np.ndarray,
    cases: np.ndarray,
    classes: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    point: dict[str, float] | None = None,
) -> tuple[dict[str, float], np.ndarray, int]:
    """`bootstrap_draws` of `classification_metrics` (same draws, same values), all draws at once
    (`cbmir.classification.metric_draws`): at the paper's size a loop of scikit-learn's ROC-AUC takes hours.
    `point`: the metrics on all rows when already computed. Bad input raises `classification_metrics`' error
    before any draw."""
    point = point if point is not None else fast_classification_metrics(y_true, scores, classes).metrics
    codes, counts = case_draw_counts(cases, n_boot, seed)
    return point, metric_draws(y_true, scores, codes, counts), counts.shape[1]


def _check_ci_params(n_boot: int, level: float) -> None:
    if n_boot < 1 or not 0 < level < 1:
        raise ClassifyError(
            f"parameters 'n_boot' = {n_boot} (>= 1) and 'level' = {level} (0..1) are out of range"
        )


def cluster_bootstrap(
    cases: np.ndarray,
    statistic: Callable[[np.ndarray], dict[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Percentile CI of `statistic(weights)` over a bootstrap of cases (the draws of `bootstrap_draws`).

    Returns DataFrame(metric, value, ci_low, ci_high, cases, rows); NaN draws (e.g. ROC-AUC with one class)
    are left out of the percentiles.
    """
    _check_ci_params(n_boot, level)
    point, values, n_cases = bootstrap_draws(cases, statistic, n_boot, seed)
    return _percentile_frame(point, values, n_cases, len(np.asarray(cases)), level)


def _percentile_frame(
    point: dict[str, float], values: np.ndarray, n_cases: int, rows: int, level: float
) -> pd.DataFrame:
    alpha = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        lo, hi = np.nanquantile(values, [alpha, 1 - alpha], axis=0)
    return pd.DataFrame(
        {
            "metric": list(point),
            "value": list(point.values()),
            "ci_low": lo,
            "ci_high": hi,
            "cases": n_cases,
            "rows": rows,
        }  # fmt: skip
    )


def classification_ci(
    y_true: np.ndarray,
    scores: np.ndarray,
    cases: np.ndarray,
    classes: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """The paper's classification metrics with a cluster-bootstrap CI over test cases (see `cluster_bootstrap`).

    Each draw weighs every test query by how often its case was drawn (same as repeating its queries).
    """
    y, s = np.asarray(y_true), np.asarray(scores)
    if len(np.asarray(cases)) != len(y):
        raise ClassifyError(f"parameter 'cases' has {len(np.asarray(cases))} entries for {len(y)} queries")
    _check_ci_params(n_boot, level)
    point, values, n_cases = classification_draws(y, s, cases, classes, n_boot, seed)
    return _percentile_frame(point, values, n_cases, len(y), level)


def outcome_ci(outcome: Outcome, model: str, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """`classification_ci` of an outcome's test scores, with `model, head, rule` columns in front and each
    metric's `chance` (`outcome_chance`). The draws are kept on the outcome for `paired_outcomes`."""
    point, values, n_cases = _all_draws(outcome, n_boot, seed)
    table = _percentile_frame(point, values, n_cases, len(outcome.test_labels), 0.95)
    table["chance"] = table["metric"].map(outcome_chance(outcome)).astype(np.float64)
    table.insert(0, "rule", outcome.rule)
    table.insert(0, "head", outcome.head)
    table.insert(0, "model", model)
    return table


def _from_table(
    table: Neighbours | None, ids: np.ndarray, query: np.ndarray, train: np.ndarray, k: int
) -> np.ndarray | None:
    """Positions in `train` [len(query), k] of the first k neighbours of the `query` rows, read from a stored
    table (ids in `row_ids` numbering); None when there is no table, or it lacks a query row or k neighbours."""
    if table is None or table.ids.shape[1] < k:
        return None
    if table.index_rows is not None and not np.array_equal(np.sort(table.index_rows), np.sort(ids[train])):
        raise ClassifyError(
            f"the stored neighbour table's index holds {len(table.index_rows)} rows, not the {len(train)} train rows"
        )
    size = int(max(ids.max(initial=-1), table.query_rows.max(initial=-1), table.ids.max(initial=-1))) + 1
    at = np.full(size, -1, dtype=np.int64)
    at[table.query_rows] = np.arange(len(table.query_rows))
    found = at[ids[query]]
    if (found < 0).any():
        return None  # e.g. queries left out of the stored table: search them all instead
    neighbours = table.ids[found, :k]
    if (neighbours < 0).any():
        return None
    at[:] = -1
    at[ids[train]] = np.arange(len(train))
    pos = at[neighbours]
    if (pos < 0).any():
        raise ClassifyError("the stored neighbour table names a neighbour that is not a train row")
    return pos


def _neighbours(
    xb: np.ndarray,
    xq: np.ndarray,
    k: int,
    cb: np.ndarray | None = None,
    cq: np.ndarray | None = None,
    index_type: str = "flat",
    index_params: Mapping | None = None,
) -> np.ndarray:
    """Positions [Q, k] of each query's k nearest index rows outside its own case (cosine search with the
    `cbmir.search` index `index_type` and its builder parameters `index_params`; "flat" = exact)."""
    cases = {} if cb is None else {"index_cases": cb, "query_cases": cq}
    return search(xb, xq, k, progress=False, index_type=index_type, **cases, **dict(index_params or {}))[1]


def index_sentence(index_type: str = "flat", index_params: Mapping | None = None) -> str:
    """A phrase naming the kNN head's search index (for a notebook's method text)."""
    check_index_params(index_type, dict(index_params or {}))
    if index_type == "flat":
        return "exact cosine search (FAISS inner product on unit vectors, index_type `flat`)"
    params = (
        ", ".join(f"{k} = {v}" for k, v in dict(index_params or {}).items()) or "the defaults of cbmir.search"
    )
    return f"approximate cosine search (index_type `{index_type}`, parameters: {params})"


def wide_ci(long: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """`outcome_ci` tables (long: model, head, rule, metric, value, ci_low, ci_high[, chance], cases, rows) as one
    row per model and head: `model, head, rule, <metric>, <metric> lo, <metric> hi[, <metric> chance], ...,
    cases, queries`."""
    if metrics is not None:
        long = long[long["metric"].isin(metrics)]
    rows = []
    for (model, head), part in long.groupby(["model", "head"], sort=False):
        row = {"model": model, "head": head, "rule": part["rule"].iloc[0]}
        for r in part.itertuples():
            row.update({r.metric: r.value, f"{r.metric} lo": r.ci_low, f"{r.metric} hi": r.ci_high})
            if "chance" in part:
                row[f"{r.metric} chance"] = r.chance
        row["cases"] = int(part["cases"].iloc[0])
        row["queries"] = int(part["rows"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


# ---- chance values and paired comparisons -------------------------------------------------------------
AUC_CHANCE = 0.5


def chance_metrics(
    test_labels: np.ndarray, n_classes: int, train_counts: np.ndarray | None = None
) -> dict[str, float]:
    """Chance value of each metric of `cbmir.classification.classification_metrics` on these test labels.

    - `accuracy` and `f1_micro` (equal for single-label data): **majority-class accuracy**, the share of the most
      frequent test class, i.e. the most any constant answer scores on this test set.
    - `f1_macro`: macro-F1 (over the classes present in test, as the metric) of a classifier that answers class j
      with probability pi_j whatever the image, from its expected confusion matrix: precision_j = p_j (the test
      share of class j), recall_j = pi_j, F1_j = 2 p_j pi_j / (p_j + pi_j). The larger of two such classifiers:
      the **prior** one (pi = the train class shares, `train_counts`) and the **uniform** one (pi_j =
      1 / `n_classes`); also returned as `f1_macro_prior` and `f1_macro_uniform`.
    - `roc_auc_micro`, `roc_auc_macro`: 0.5 (scores independent of the label).
    """
    y = np.asarray(test_labels, dtype=np.int64)
    if y.ndim != 1 or len(y) == 0 or n_classes < 1 or y.min() < 0 or y.max() >= n_classes:
        raise ClassifyError(
            f"parameters 'test_labels' (shape {y.shape}) and 'n_classes' = {n_classes} disagree or are empty"
        )
    p = np.bincount(y, minlength=n_classes) / len(y)
    present = p > 0

    def macro_f1(pi: np.ndarray) -> float:
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + pi > 0, 2 * p * pi / (p + pi), 0.0)
        return float(f1[present].mean())

    uniform = macro_f1(np.full(n_classes, 1.0 / n_classes))
    prior = np.nan
    if train_counts is not None:
        counts = np.asarray(train_counts, dtype=np.float64)
        if counts.shape != (n_classes,) or (counts < 0).any() or counts.sum() <= 0:
            raise ClassifyError(
                f"parameter 'train_counts' must hold {n_classes} non-negative counts, not all 0; "
                f"got shape {counts.shape}"
            )
        prior = macro_f1(counts / counts.sum())
    majority = float(p.max())
    return {
        "accuracy": majority,
        "f1_micro": majority,
        "f1_macro": float(np.nanmax([uniform, prior])),
        "f1_macro_prior": float(prior),
        "f1_macro_uniform": uniform,
        "roc_auc_micro": AUC_CHANCE,
        "roc_auc_macro": AUC_CHANCE,
    }


def outcome_chance(outcome: Outcome) -> dict[str, float]:
    """`chance_metrics` of an outcome's test labels, its classes and its train class counts."""
    return chance_metrics(outcome.test_labels, len(outcome.classes), outcome.train_counts)


def _same_queries(a: Outcome, b: Outcome) -> None:
    if not (
        np.array_equal(a.test_labels, b.test_labels)
        and np.array_equal(a.test_cases, b.test_cases)
        and np.array_equal(a.classes, b.classes)
    ):
        raise ClassifyError(
            "paired_outcomes: the two outcomes were scored on different test queries, cases or classes "
            f"({len(a.test_labels)} and {len(b.test_labels)} queries); a paired test needs the same ones"
        )


def _all_draws(outcome: Outcome, n_boot: int, seed: int) -> tuple[dict[str, float], np.ndarray, int]:
    """`bootstrap_draws` of every test metric of the outcome (the draws of `classification_ci`), computed once
    per (n_boot, seed) and kept on the outcome."""
    if (n_boot, seed) not in outcome.draws:
        outcome.draws[(n_boot, seed)] = classification_draws(
            outcome.test_labels, outcome.test_scores, outcome.test_cases, outcome.classes, n_boot, seed,
            point=outcome.result.metrics,
        )  # fmt: skip
    return outcome.draws[(n_boot, seed)]


def _metric_draws(
    outcome: Outcome, names: Sequence[str], n_boot: int, seed: int
) -> tuple[dict[str, float], np.ndarray, int]:
    """The draws of `_all_draws` for the metrics `names` (the draws depend only on the cases and the seed)."""
    point, values, n_cases = _all_draws(outcome, n_boot, seed)
    unknown = sorted(set(names) - set(point))
    if unknown:
        raise ClassifyError(f"parameter 'metrics': unknown {unknown}; known {list(point)}")
    cols = [list(point).index(k) for k in names]
    return {k: point[k] for k in names}, values[:, cols], n_cases


def _paired_rows(a_draws, b_draws, names: Sequence[str], n_queries: int, level: float) -> pd.DataFrame:
    from cbmir.metrics.bootstrap import p_floor, p_value

    (pa, va, n_cases), (pb, vb, _) = a_draws, b_draws
    alpha = (1 - level) / 2
    rows = []
    for j, name in enumerate(names):
        diffs = va[:, j] - vb[:, j]
        diffs = diffs[~np.isnan(diffs)]
        low = high = p = floor = np.nan
        if len(diffs):
            low, high = np.quantile(diffs, [alpha, 1 - alpha])
            p, floor = float(p_value(diffs[:, None])[0]), p_floor(len(diffs))
        rows.append(
            {"metric": name, "difference": pa[name] - pb[name], "low": low, "high": high, "p_value": p,
             "p_min": floor, "n_cases": n_cases, "n_queries": n_queries}
        )  # fmt: skip
    return pd.DataFrame(rows)


def paired_outcomes(
    a: Outcome,
    b: Outcome,
    metrics: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Paired cluster bootstrap of metric(a) - metric(b) on the same test queries (the same case draws for both).

    `a` and `b` must hold the same test labels, cases and classes (e.g. two models, one head). Returns
    DataFrame(metric, difference, low, high, p_value, p_min, n_cases, n_queries): percentile interval of the
    resampled differences and the two-sided bootstrap p-value of `cbmir.metrics.bootstrap.p_value`, with its
    floor `p_min` (resamples where a metric is undefined, e.g. ROC-AUC with one class, are left out).
    """
    _same_queries(a, b)
    if not 0 < level < 1:
        raise ClassifyError(f"parameter 'level' = {level} must lie between 0 and 1")
    names = list(metrics) if metrics is not None else list(a.result.metrics)
    draws = [_metric_draws(o, names, n_boot, seed) for o in (a, b)]
    return _paired_rows(*draws, names, len(a.test_labels), level)


def top_two(
    outcomes: dict[str, Outcome],
    metric: str = "f1_macro",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """The model with the highest `metric` minus the runner-up (by their point estimates; ties keep the order of
    `outcomes`), paired over the same test cases (`paired_outcomes`, one head). One comparison, chosen after the
    fact by the point estimates, so it is not adjusted for multiplicity.

    Columns: model, runner_up, head, metric, difference, low, high, p_value, p_min, n_queries, n_cases (empty with
    fewer than two models).
    """
    columns = ["model", "runner_up", "head", "metric", "difference", "low", "high", "p_value", "p_min",
               "n_queries", "n_cases"]  # fmt: skip
    if len(outcomes) < 2:
        return pd.DataFrame(columns=columns)
    ranked = sorted(outcomes, key=lambda m: -outcomes[m].result.metrics[metric])
    best, nxt = ranked[0], ranked[1]
    row = paired_outcomes(outcomes[best], outcomes[nxt], [metric], n_boot=n_boot, seed=seed, level=level)
    return row.assign(model=best, runner_up=nxt, head=outcomes[best].head)[columns]


def against_baselines(
    outcomes: dict[str, Outcome],
    baselines: Sequence[str] = ("raw-pixels", "random-vit"),
    metrics: Sequence[str] = ("f1_macro", "accuracy", "roc_auc_macro"),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Each model that is not a baseline minus each baseline that ran, per metric (`paired_outcomes`, one head).

    `outcomes`: {model: Outcome of one head}. Holm-adjusted p-values over all (model, baseline) pairs of a
    metric. Columns: model, baseline, head, metric, difference, low, high, p_value, p_holm, p_min, n_queries,
    n_cases (empty when no baseline or no other model ran).
    """
    from cbmir.metrics.bootstrap import holm

    columns = ["model", "baseline", "head", "metric", "difference", "low", "high", "p_value", "p_holm",
               "p_min", "n_queries", "n_cases"]  # fmt: skip
    if not 0 < level < 1:
        raise ClassifyError(f"parameter 'level' = {level} must lie between 0 and 1")
    present = [b for b in baselines if b in outcomes]
    others = [m for m in outcomes if m not in baselines]
    if not present or not others:
        return pd.DataFrame(columns=columns)
    names = list(metrics)
    draws = {}
    for m in [*others, *present]:
        _same_queries(outcomes[m], outcomes[present[0]])
        draws[m] = _metric_draws(outcomes[m], names, n_boot, seed)
    out = pd.concat(
        [
            _paired_rows(draws[m], draws[base], names, len(outcomes[m].test_labels), level).assign(
                model=m, baseline=base, head=outcomes[m].head
            )
            for base in present
            for m in others
        ],
        ignore_index=True,
    )
    out["p_holm"] = np.nan
    for _, idx in out.groupby("metric").groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_value"].to_numpy())
    return out[columns]
