"""Study: all models side by side. Which retrieves best, by how much, and how far above the baselines?

Every model's neighbour table must hold the same queries (`query_rows`) searched in the same index. All models
are resampled with the SAME cluster-bootstrap draws of the query cases, so a difference between two models is a
paired comparison. Comparisons of several models against one (the best, or a baseline) get Holm-adjusted
p-values within each family (one family per average and N).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from cbmir.analyses.retrieval import PAPER_NS, encode
from cbmir.metrics import bootstrap, chance, retrieval
from cbmir.tables import ALPHA

PAPER_SOURCE = "Denner et al., arXiv 2403.06567, Table 3: 4 datasets, 1.6 M images, 161 labels"
# The paper's published numbers, kept as data (only those reproduced here are listed).
PAPER_REPORTED = pd.DataFrame(
    {
        "model": "biomedclip",
        "average": "micro",
        "N": [1, 3, 5, 10],
        "value": [0.594, 0.590, 0.588, 0.583],
        "source": PAPER_SOURCE,
    }
)


# A Holm-adjusted p this close to ALPHA, in Monte-Carlo standard errors, could fall on either side of it with another
# seed. A two-sided bootstrap p near p_raw from B resamples has a standard error of about sqrt(2 p_raw / B); Holm
# multiplies p_raw by at most the family's size m, so near ALPHA the adjusted p's error is at most
# sqrt(2 m ALPHA / B). Such a table is recomputed with SETTLE_FACTOR times the resamples (every family of it, so that
# one set of draws serves the whole table), up to MAX_SETTLE times.
BORDERLINE_SE = 3.0
SETTLE_FACTOR = 10
MAX_SETTLE = 2


def borderline(
    p_values: Sequence[float] | np.ndarray,
    n_boot: int,
    family_size: int | Sequence[int] | np.ndarray = 1,
    alpha: float = ALPHA,
) -> np.ndarray:
    """Which p-values lie within `BORDERLINE_SE` Monte-Carlo standard errors, sqrt(2 m alpha / B), of `alpha`
    (m: the size of each p-value's Holm family; 1 for an unadjusted p)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = np.asarray(family_size, dtype=np.float64)
    return np.abs(p - alpha) <= BORDERLINE_SE * np.sqrt(2 * m * alpha / n_boot)


def _families(out: pd.DataFrame) -> np.ndarray:
    """The size of each row's Holm family (one per average and N), counting the rows with a p-value."""
    return out.groupby(["average", "N"])["p_holm"].transform("count").to_numpy()


def _settled(run: Callable[[int], pd.DataFrame], n_boot: int, settle: bool) -> pd.DataFrame:
    """`run(n_boot)`; where `settle` and a Holm-adjusted p of it is `borderline`, rerun with `SETTLE_FACTOR` times
    the resamples (at most `MAX_SETTLE` times). The table's `resamples` column says which ran."""
    out = run(n_boot)
    for _ in range(MAX_SETTLE if settle else 0):
        ok = out["p_holm"].notna().to_numpy()
        if not len(out) or not borderline(out["p_holm"][ok], n_boot, _families(out)[ok]).any():
            break
        n_boot *= SETTLE_FACTOR
        out = run(n_boot)
    return out.assign(resamples=n_boot)


class _Scored:
    """Per-query modified P@N of every model at `ns`, stacked, with the shared resamples."""

    def __init__(self, ids_by_model, query_rows, index_rows, labels, cases, ns, n_boot, seed):
        if not ids_by_model:
            raise ValueError("parameter 'ids_by_model' is empty")
        self.models = list(ids_by_model)
        shapes = {m: np.asarray(v).shape for m, v in ids_by_model.items()}
        if len({s[0] for s in shapes.values()}) > 1:
            raise ValueError(f"the models' neighbour tables hold different numbers of queries: {shapes}")
        k = min(s[1] for s in shapes.values())
        self.ns = [n for n in ns if n <= k]
        if not self.ns:
            raise ValueError(f"parameter 'ns' has no N <= K = {k}")
        cols = np.array(self.ns) - 1
        blocks = []
        for model in self.models:
            enc = encode(ids_by_model[model], query_rows, index_rows, labels, cases)
            blocks.append(retrieval.precision_at_n(enc.neighbours, enc.queries, enc.counts)[:, cols])
        self.chance = chance.expected_precision(enc.queries, enc.counts, enc.k)[:, cols]
        self.p, self.q, self.g = bootstrap.prepare(np.hstack(blocks), enc.queries, enc.cases)
        keep = ~np.isnan(np.hstack(blocks)).any(axis=1)
        self.chance, self.q_all = self.chance[keep], enc.queries[keep]
        self.n_boot, self.seed = n_boot, seed
        self._stats: dict[str, np.ndarray] = {}

    def block(self, model: str) -> slice:
        i = self.models.index(model)
        return slice(i * len(self.ns), (i + 1) * len(self.ns))

    def point(self, average: str) -> np.ndarray:
        return bootstrap.point_estimate(self.p, self.q, average)

    def stats(self, average: str) -> np.ndarray:
        if average not in self._stats:
            self._stats[average] = bootstrap.resample_stats(
                self.p, self.q, self.g, average, self.n_boot, self.seed
            )
        return self._stats[average]

    def resampled(self, n_boot: int) -> _Scored:
        """This table with `n_boot` resamples (itself where that is its number; the scores are shared)."""
        if n_boot == self.n_boot:
            return self
        other = copy.copy(self)
        other.n_boot, other._stats = n_boot, {}
        return other

    @property
    def counts(self) -> dict:
        return {"n_queries": len(self.q), "n_cases": int(self.g.max()) + 1}


def _first_micro(table: pd.DataFrame) -> pd.Series:
    """Micro P@N at the smallest N of a `model_table`, by model: the ranking rule."""
    part = table[(table["average"] == "micro") & (table["N"] == table["N"].min())]
    return part.set_index("model")["estimate"]


def model_table(
    ids_by_model: Mapping[str, np.ndarray],
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    *,
    ns: Sequence[int] = PAPER_NS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Micro and macro modified P@N of every model with cluster-bootstrap CIs and chance.

    Columns: model, rank (by micro P@1 as shown, 3 decimals, so models that read the same share a rank; 1 = best),
    average, N, estimate, low, high, chance, n_queries, n_cases.
    `attrs["best"]`: the best model (highest micro P@1; ties: macro P@1, then name).
    """
    s = _Scored(ids_by_model, query_rows, index_rows, labels, cases, ns, n_boot, seed)
    rows = []
    for average in bootstrap.AVERAGES:
        point = s.point(average)
        low, high = bootstrap.percentile_interval(s.stats(average), ci)
        ch_micro, ch_macro = retrieval.micro_macro(s.chance, s.q_all)
        ch = ch_micro if average == "micro" else ch_macro
        for model in s.models:
            b = s.block(model)
            for j, n in enumerate(s.ns):
                rows.append(
                    {
                        "model": model,
                        "average": average,
                        "N": n,
                        "estimate": point[b][j],
                        "low": low[b][j],
                        "high": high[b][j],
                        "chance": ch[j],
                        **s.counts,
                    }
                )
    table = pd.DataFrame(rows)
    best = best_model(table)
    rank = _first_micro(table).round(3).rank(ascending=False, method="min").astype(int)
    table.insert(1, "rank", table["model"].map(rank))
    table.attrs["best"] = best
    return table


def best_model(table: pd.DataFrame) -> str:
    """The model with the highest micro P@N at the smallest N (ties: macro at that N, then the name)."""
    n = table["N"].min()
    part = table[table["N"] == n].pivot_table(index="model", columns="average", values="estimate")
    part = part.reset_index().sort_values(["micro", "macro", "model"], ascending=[False, False, True])
    return str(part["model"].iloc[0])


def _compare(s: _Scored, pairs: Sequence[tuple[str, str]], ci: float, other: str) -> pd.DataFrame:
    """Paired differences (model - other model) for each pair, Holm within each (average, N) family."""
    rows = []
    for average in bootstrap.AVERAGES:
        point, stats = s.point(average), s.stats(average)
        for model, ref in pairs:
            diffs = stats[:, s.block(model)] - stats[:, s.block(ref)]
            low, high = bootstrap.percentile_interval(diffs, ci)
            p = bootstrap.p_value(diffs)
            for j, n in enumerate(s.ns):
                rows.append(
                    {
                        "model": model,
                        other: ref,
                        "average": average,
                        "N": n,
                        "difference": point[s.block(model)][j] - point[s.block(ref)][j],
                        "low": low[j],
                        "high": high[j],
                        "p_value": p[j],
                        "p_min": bootstrap.p_floor(len(diffs)),
                        **s.counts,
                    }
                )
    out = pd.DataFrame(
        rows,
        columns=[
            "model",
            other,
            "average",
            "N",
            "difference",
            "low",
            "high",
            "p_value",
            "p_min",
            "n_queries",
            "n_cases",
        ],
    )
    out["p_holm"] = np.nan
    for _, idx in out.groupby(["average", "N"]).groups.items():
        out.loc[idx, "p_holm"] = bootstrap.holm(out.loc[idx, "p_value"].to_numpy())
    return out[
        [
            "model",
            other,
            "average",
            "N",
            "difference",
            "low",
            "high",
            "p_value",
            "p_holm",
            "p_min",
            "n_queries",
            "n_cases",
        ]
    ]


def against_best(
    ids_by_model: Mapping[str, np.ndarray],
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    *,
    best: str | None = None,
    ns: Sequence[int] = PAPER_NS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    settle: bool = True,
) -> pd.DataFrame:
    """Each other model minus the best one (paired cluster bootstrap; Holm over the models per average and N).

    `best` defaults to `best_model` of the point estimates. Columns: model, best, average, N, difference, low,
    high, p_value, p_holm, p_min, n_queries, n_cases, resamples (`n_boot`, or `SETTLE_FACTOR` times it where
    `settle` and a Holm-adjusted p was `borderline`).
    """
    s = _Scored(ids_by_model, query_rows, index_rows, labels, cases, ns, n_boot, seed)
    if best is None:
        table = pd.DataFrame(
            [
                {"model": m, "average": a, "N": n, "estimate": s.point(a)[s.block(m)][j]}
                for a in bootstrap.AVERAGES
                for m in s.models
                for j, n in enumerate(s.ns)
            ]
        )
        best = best_model(table)
    if best not in s.models:
        raise ValueError(f"parameter 'best' is {best!r}; the models are {s.models}")
    pairs = [(m, best) for m in s.models if m != best]
    return _settled(lambda b: _compare(s.resampled(b), pairs, ci, "best"), n_boot, settle)


def against_baselines(
    ids_by_model: Mapping[str, np.ndarray],
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    baselines: Sequence[str],
    cases: Sequence | np.ndarray | None = None,
    *,
    ns: Sequence[int] = PAPER_NS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    settle: bool = True,
) -> pd.DataFrame:
    """Each non-baseline model minus each baseline that ran (paired; Holm over all pairs per average and N).

    Columns: model, baseline, average, N, difference, low, high, p_value, p_holm, p_min, n_queries, n_cases,
    resamples (as in `against_best`); empty when no baseline or no other model ran.
    """
    present = [b for b in baselines if b in ids_by_model]
    others = [m for m in ids_by_model if m not in present]
    s = _Scored(ids_by_model, query_rows, index_rows, labels, cases, ns, n_boot, seed)
    pairs = [(m, b) for m in others for b in present]
    return _settled(lambda b: _compare(s.resampled(b), pairs, ci, "baseline"), n_boot, settle)


def paper_comparison(
    table: pd.DataFrame, config_name: str, paper_setup: bool = False, paper_model: str = "biomedclip"
) -> pd.DataFrame:
    """The article's printed numbers (`PAPER_REPORTED`) beside ours where the run holds the paper's data and splits
    (`paper_setup`, the config's flag), else alone.

    `table` is `model_table`'s output. Columns: model, average, N, paper, source, ours, low, high, n_cases, setup.
    """
    out = PAPER_REPORTED[PAPER_REPORTED["model"] == paper_model].rename(columns={"value": "paper"})
    out = out.reset_index(drop=True)
    ours = table[table["model"] == paper_model].set_index(["average", "N"])
    same = paper_setup and not ours.empty
    for col, src in (("ours", "estimate"), ("low", "low"), ("high", "high"), ("n_cases", "n_cases")):
        out[col] = [
            ours.loc[(a, n), src] if same and (a, n) in ours.index else np.nan
            for a, n in zip(out["average"], out["N"], strict=True)
        ]
    if same:
        out["setup"] = "same datasets, splits and model"
    elif paper_setup:
        out["setup"] = f"{paper_model} did not run in config {config_name!r}; the article's value alone"
    else:
        out["setup"] = (
            f"not comparable: config {config_name!r} does not hold the paper's data and splits "
            "(paper_setup: false); the article's value alone"
        )
    return out


def display_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """`model_table` as one row per model for reading: rank, model, "<average> P@N" = "estimate [low, high]" for
    each average and N, the chance value of each average ("chance <average>", one column when it is the same at
    every N, as for modified P@N, else one per N), and the numbers of queries and cases."""
    rows = []
    for model, part in table.groupby("model", sort=False):
        row = {"rank": int(part["rank"].iloc[0]), "model": model}
        for _, r in part.iterrows():
            row[f"{r['average']} P@{int(r['N'])}"] = (
                f"{r['estimate']:.{digits}f} [{r['low']:.{digits}f}, {r['high']:.{digits}f}]"
            )
        for average, by_n in part.groupby("average", sort=False):
            values = by_n["chance"].to_numpy(dtype=float)
            if np.allclose(values, values[0]):
                row[f"chance {average}"] = round(float(values[0]), digits)
            else:
                row |= {
                    f"chance {average} P@{int(n)}": round(float(v), digits)
                    for n, v in zip(by_n["N"], values, strict=True)
                }
        row["queries"], row["cases"] = int(part["n_queries"].iloc[0]), int(part["n_cases"].iloc[0])
        rows.append(row)
    out = pd.DataFrame(rows)
    first = _first_micro(table)
    out["_order"] = [
        (m != table.attrs.get("best"), -first[m]) for m in out["model"]
    ]  # the reference model first
    return out.sort_values(["rank", "_order"], ignore_index=True).drop(columns="_order")


OVERLAP_COLUMN = "pretrained on test sets"


TITLE_COLUMN = "what it is"


def with_titles(display: pd.DataFrame) -> pd.DataFrame:
    """`display_table` with each model's title (`cbmir.models` preset: what it is and how it was trained) after
    the model column, so that a reader meets every encoder described where it is ranked; a spec that is not a
    preset keeps the spec."""
    from cbmir.models.registry import PresetError, resolve_spec

    def title(spec: str) -> str:
        try:
            return resolve_spec(spec).title
        except PresetError:
            return spec

    out = display.copy()
    out.insert(out.columns.get_loc("model") + 1, TITLE_COLUMN, [title(m) for m in out["model"]])
    return out


def with_overlap(display: pd.DataFrame, overlap: pd.DataFrame) -> pd.DataFrame:
    """`display_table` with a column marking the models whose pretraining data hold the benchmark's test sets
    (`cbmir.models.overlap.overlap_table`): "yes: MIMIC-CXR, CheXpert", "none recorded" (no test set in the
    recorded pretraining lists; not a proof of absence) or "unknown"."""
    marks = {
        m: f"yes: {hits}" if status == "yes" else "none recorded" if status == "no" else status
        for m, status, hits in zip(overlap["model"], overlap["overlap"], overlap["overlapping"], strict=True)
    }
    missing = sorted(set(display["model"]) - set(marks))
    if missing:
        raise ValueError(f"parameter 'overlap' has no row for the models {missing}")
    out = display.copy()
    out.insert(out.columns.get_loc("model") + 1, OVERLAP_COLUMN, out["model"].map(marks))
    return out
