"""The authors' own published figures beside ours, per model, with the difference and its known reasons.

The authors' tables come from `cbmir import-authors` (`<work_dir>/reference/<model>.csv`, long form
`table, N, metric, value`; `cbmir.authors.read_reference`). Ours: modified P@N micro/macro of our neighbour
tables (test queries in the train index), and notebook 7's kNN and linear-probe tables where they exist.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cbmir.config import slug
from cbmir.metrics.retrieval import label_matrices, micro_macro, precision_at_n

RETRIEVAL_NS = (1, 3, 5, 10)
# their classification column -> ours (notebook 7's wide tables); theirs without a counterpart are shown alone
CLASSIFICATION_METRICS = {
    "micro_roc_auc": "roc_auc_micro",
    "micro_f1": "f1_micro",
    "macro_roc_auc": "roc_auc_macro",
    "macro_f1": "f1_macro",
    "macro_precision": None,
    "macro_recall": None,
    "macro_accuracy": None,
}
OURS_TABLES = {
    "knn_classification": "07_classification-knn.csv",
    "linear_probing": "07_classification-probe.csv",
}
SAME = 1e-6  # |ours - theirs| at or below this reads as the same number
COLUMNS = ["model", "table", "metric", "theirs", "ours", "difference"]


def reference_files(work_dir: str | Path, models: Sequence[str]) -> dict[str, Path]:
    """{model: its reference CSV} for the models whose authors' tables were imported."""
    folder = Path(work_dir) / "reference"
    found = {m: folder / f"{slug(m)}.csv" for m in models}
    return {m: p for m, p in found.items() if p.is_file()}


def our_precision(neighbours, row_labels: np.ndarray, ns: Sequence[int]) -> dict[int, tuple[float, float]]:
    """{N: (micro, macro)} modified P@N of a neighbour table (N beyond its K left out)."""
    ns = [n for n in ns if n <= neighbours.ids.shape[1]]
    if not ns:
        return {}
    labels, q, counts, _ = label_matrices(neighbours, row_labels, max_n=max(ns))
    micro, macro = micro_macro(precision_at_n(labels, q, counts), q)
    return {n: (float(micro[n - 1]), float(macro[n - 1])) for n in ns}


def compare(
    references: Mapping[str, str | Path],
    neighbours: Mapping[str, object],
    row_labels: np.ndarray,
    tables_dir: str | Path | None = None,
    ns: Sequence[int] = RETRIEVAL_NS,
) -> pd.DataFrame:
    """One row per (model, table, metric): theirs, ours (NaN where we have no counterpart) and ours - theirs."""
    from cbmir.authors import read_reference

    rows = []
    for model, path in references.items():
        long = pd.read_csv(path)
        tables = set(long["table"])
        if "retrieval" in tables:
            theirs = read_reference(path, "retrieval").set_index("N")
            ours = our_precision(neighbours[model], row_labels, ns) if model in neighbours else {}
            for n in ns:
                if n not in theirs.index:
                    continue
                for avg, col in (("micro", "micro_precision_mean"), ("macro", "macro_precision_mean")):
                    mine = ours.get(n, (np.nan, np.nan))[0 if avg == "micro" else 1]
                    rows.append((model, "retrieval", f"{avg} P@{n}", float(theirs.at[n, col]), mine))
        for table, file in OURS_TABLES.items():
            if table not in tables:
                continue
            theirs = read_reference(path, table).iloc[0]
            ours_file = Path(tables_dir) / file if tables_dir is not None else None
            ours_frame = pd.read_csv(ours_file) if ours_file is not None and ours_file.is_file() else None
            ours_row = None
            if ours_frame is not None and (ours_frame["model"] == model).any():
                ours_row = ours_frame[ours_frame["model"] == model].iloc[0]
            for metric, value in theirs.items():
                col = CLASSIFICATION_METRICS.get(str(metric))
                mine = float(ours_row[col]) if ours_row is not None and col in ours_row.index else np.nan
                rows.append((model, table, str(metric), float(value), mine))
    out = pd.DataFrame([(*r, r[4] - r[3]) for r in rows], columns=COLUMNS)
    return out


def _reasons(model: str, table: str, imported: bool, index_type: str, their_lists: bool = False) -> list[str]:
    """The known reasons why our figure can differ from theirs for this model and table (`their_lists`: our
    P@N was computed on their own neighbour lists)."""
    why = []
    if table == "retrieval":
        if their_lists:
            why.append(
                "ours are computed on their own neighbour lists (knn.csv), so only the metric can differ"
            )
        elif index_type != "flat":
            why.append(f"our search is approximate ({index_type}) where theirs is exact (IndexFlatIP)")
        why.append(
            "our P@N leaves out neighbours of the query's own patient where the manifest records patients"
        )
    if table == "knn_classification":
        why.append(
            "their kNN classifier votes with k-1 neighbours; ours with k (chosen by our selection rule)"
        )
    if table == "linear_probing":
        why.append(
            "the probe's training is stochastic (their seed, batch order and stopping epoch are not ours)"
        )
    if table != "retrieval":
        why.append("their macro_precision, macro_recall and macro_accuracy have no counterpart here")
    if model.startswith("vit-mae-b"):
        why.append(
            "their ViT-MAE vectors were made with the random 75 % masking kept, so they are not reproducible"
            + (
                " (these are their vectors, so masking is not a source of difference here)"
                if imported
                else ""
            )
        )
    if model.startswith("resnet50"):
        why.append(
            "their ResNet50 vectors are the 1000 ImageNet logits (`resnet50-paper`), not pooled features"
            + ("" if model == "resnet50-paper" else f"; `{model}` differs by design")
        )
    if not imported:
        why.append("our vectors are our own extraction, not theirs")
    return why


def _signed(difference: float) -> str:
    """A difference to 3 decimals, or in scientific notation when it would read +0.000 or -0.000."""
    return f"{difference:+.3f}" if abs(difference) >= 5e-4 else f"{difference:+.1e}"


def sentences(
    table: pd.DataFrame,
    imported: Mapping[str, bool] | None = None,
    index_type: str = "flat",
    their_lists: Collection[str] = (),
) -> list[str]:
    """Where ours and theirs agree or differ, per model and table, with the known reasons for a difference
    (`their_lists`: the models whose neighbours were the authors' own lists rather than our search)."""
    imported = imported or {}
    out = []
    for (model, name), part in table.groupby(["model", "table"], sort=False):
        both = part.dropna(subset=["ours"])
        if both.empty:
            out.append(f"{model}, {name}: the authors' figures only; no counterpart of ours ran.")
            continue
        worst = both.loc[both["difference"].abs().idxmax()]
        if abs(worst["difference"]) <= SAME:
            same = f"{model}, {name}: ours equal theirs on all {len(both)} shared metrics (within {SAME:g})"
            if name == "retrieval" and model in their_lists:  # their neighbours scored by our metric
                same += (
                    " (scored from their own neighbour lists: this checks our metric, not a search of ours)"
                )
            out.append(same + ".")
            continue
        differing = int((both["difference"].abs() > SAME).sum())
        reasons = "; ".join(
            _reasons(str(model), str(name), imported.get(str(model), False), index_type, model in their_lists)
        )
        out.append(
            f"{model}, {name}: {differing} of {len(both)} shared metrics differ; the largest is {worst['metric']} "
            f"(theirs {worst['theirs']:.3f}, ours {worst['ours']:.3f}, difference {_signed(worst['difference'])}). "
            f"Known differences of method, none tested here as the cause of this gap: {reasons}."
        )
    return out
