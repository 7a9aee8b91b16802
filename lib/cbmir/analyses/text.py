"""Study: can an image-text model find the images of a class from words alone, and name an image's class?

Text-to-image retrieval: one query per class (its prompt vector), ranked against the index images by the same
search as image queries; each query is scored with the same metrics (modified P@N, MAP@R; `cbmir.metrics`) and
the chance value of each under a random ranking of that index (`cbmir.metrics.chance`). The macro mean over the
classes carries a percentile interval from resampling the classes (the text queries are the units here), and
each class row says how many index images and cases it has.

Zero-shot classification: each query image (test split) gets the class whose prompt vector is most similar;
accuracy and macro F1 with cluster-bootstrap intervals over cases (`analyses.classify.classification_ci`),
beside the chance accuracy (1 / classes) and the always-the-majority-class baseline (`majority_baseline`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cbmir.metrics import bootstrap, chance, retrieval

DEFAULT_NS = (1, 5, 10)


def text_retrieval_table(
    ids: np.ndarray,
    query_classes: Sequence[str],
    index_rows: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    ns: Sequence[int] = DEFAULT_NS,
) -> pd.DataFrame:
    """One row per text query (class): P@N and MAP@R with their chance values, index images and cases.

    `ids` [C, K] manifest rows ranked for each class query, `query_classes` [C] the class each query stands
    for, `index_rows` the rows searched, `labels` one label per manifest row, `cases` one case per manifest row.
    Columns: class, n_index, n_index_cases, P@N, chance P@N (for each N), MAP@R, chance MAP@R, cases in top
    max(ns) (distinct cases among the first neighbours).
    """
    ids = np.asarray(ids, dtype=np.int64)
    query_classes = np.asarray(query_classes, dtype=object).astype(str)
    labels = np.asarray(labels, dtype=object).astype(str)
    index_rows = np.asarray(index_rows, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[0] != len(query_classes):
        raise ValueError(
            f"parameter 'ids' must be [C, K] with C = {len(query_classes)} queries; got {ids.shape}"
        )
    if max(ns) > ids.shape[1]:
        raise ValueError(f"parameter 'ns': N = {max(ns)} exceeds the {ids.shape[1]} neighbours per query")
    classes, codes = retrieval.encode_labels(np.concatenate([labels, query_classes]))
    row_codes, q = codes[: len(labels)], codes[len(labels) :]
    counts = np.bincount(row_codes[index_rows], minlength=len(classes))
    nb = row_codes[ids]
    prec = retrieval.precision_at_n(nb, q, counts)
    mapr = retrieval.map_at_r(nb, q, counts)
    k = ids.shape[1]
    chance_p = chance.expected_precision(q, counts, k)
    chance_map = chance.expected_map_at_r(q, counts, k)
    case_codes = bootstrap.case_codes(None if cases is None else np.asarray(cases, dtype=object), len(labels))
    out = pd.DataFrame({"class": query_classes, "n_index": counts[q]})
    out["n_index_cases"] = [len(np.unique(case_codes[index_rows[row_codes[index_rows] == c]])) for c in q]
    for n in ns:
        out[f"P@{n}"] = prec[:, n - 1]
        out[f"chance P@{n}"] = chance_p[:, n - 1]
    out["MAP@R"] = mapr
    out["chance MAP@R"] = chance_map
    out[f"cases in top {max(ns)}"] = [len(np.unique(case_codes[r[: max(ns)]])) for r in ids]
    return out


def macro_summary(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """The macro mean over the classes of each metric of `text_retrieval_table` (classes with index images),
    its percentile interval from resampling the classes, and the macro chance value."""
    table = table[table["n_index"] > 0]
    metrics = [c for c in table.columns if c.startswith("P@") or c == "MAP@R"]
    rows = []
    for m in metrics:
        values = table[m].to_numpy(dtype=np.float64)
        res = bootstrap.bootstrap_ci(
            values, np.zeros(len(values), np.int64), None, n_boot=n_boot, seed=seed, ci=ci
        )
        rows.append(
            {
                "metric": m,
                "macro": float(values.mean()),
                "low": float(res["low"].iloc[0]),
                "high": float(res["high"].iloc[0]),
                "chance": float(table[f"chance {m}"].mean()),
                "classes": len(values),
            }
        )
    return pd.DataFrame(rows)


def majority_baseline(y_true: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro F1 of always predicting the most frequent true class, and the chance accuracy
    1 / n_classes of a uniformly random guess. Macro F1 averages over the classes present in `y_true`."""
    y = np.asarray(y_true, dtype=np.int64)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError("parameter 'y_true' must be a non-empty 1-D array of class codes")
    counts = np.bincount(y, minlength=n_classes)
    share = counts.max() / len(y)
    present = int((counts > 0).sum())
    return {
        "chance_accuracy": 1.0 / n_classes,
        "majority_accuracy": float(share),
        "majority_f1_macro": float(2 * share / (1 + share) / present),
    }


def zero_shot_table(
    scores: np.ndarray,
    y_true: np.ndarray,
    classes: Sequence[str],
    cases: Sequence | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Zero-shot classification of the query images from their class scores `[N, C]`: accuracy and macro F1
    with cluster-bootstrap intervals over `cases` (one per query), the chance and majority values, n cases."""
    from cbmir.analyses.classify import classification_ci

    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    table = classification_ci(y, scores, np.asarray(cases), list(classes), n_boot=n_boot, seed=seed)
    base = majority_baseline(y, scores.shape[1])
    table = table[table["metric"].isin(["accuracy", "f1_macro"])].reset_index(drop=True)
    table["chance"] = [base["chance_accuracy"], np.nan]
    table["majority"] = [base["majority_accuracy"], base["majority_f1_macro"]]
    return table[["metric", "value", "ci_low", "ci_high", "chance", "majority", "cases", "rows"]]


def findings(model: str, summary: pd.DataFrame, zero_shot: pd.DataFrame, n: int = 10) -> list[str]:
    """Sentences for the report, each with its interval and the number of classes or cases behind it."""
    out = []
    row = summary[summary["metric"] == f"P@{n}"]
    if len(row):
        r = row.iloc[0]
        verdict = "above" if r["low"] > r["chance"] else "not clearly above"
        out.append(
            f"{model}: class prompts retrieve their class with macro P@{n} {r['macro']:.2f} "
            f"(95 % CI {r['low']:.2f}-{r['high']:.2f} over {int(r['classes'])} classes), {verdict} chance "
            f"{r['chance']:.2f}."
        )
    acc = zero_shot[zero_shot["metric"] == "accuracy"]
    if len(acc):
        a = acc.iloc[0]
        verdict = "above" if a["ci_low"] > max(a["chance"], a["majority"]) else "not clearly above"
        out.append(
            f"{model}: zero-shot accuracy {a['value']:.2f} (95 % CI {a['ci_low']:.2f}-{a['ci_high']:.2f}, "
            f"{int(a['cases'])} cases, {int(a['rows'])} images), {verdict} chance {a['chance']:.2f} and the "
            f"majority class {a['majority']:.2f}."
        )
    return out
