"""Study: anatomy versus pathology. Is the body part retrieved more reliably than the finding?

1. `level_precision`: modified P@N when a hit must match the query's modality, its modality and region, or its
   full label (n_c counted at that level), each with its chance value.
   `level_contrast` compares two levels (region, label) on the same queries: each query's chance-corrected
   modified P@N, (P - chance) / (1 - chance) (`chance.corrected`), at the region level minus that at the label
   level, by a paired cluster bootstrap over cases. The raw shares are not compared (a label hit is always a region
   hit, and region-level chance is higher), nor the plain excesses P - chance: a perfect model's excess is
   1 - chance, which is smaller at the region level, so near the ceiling the finding would seem "further above
   chance" only because its chance is lower. The chance-corrected score reaches 1 at both levels.
2. `pathology_given_anatomy`: among the first N neighbours that show the query's region, the share that also has
   its label (finding), beside its chance: index images with the query's label / index images of its region
   (`cbmir.metrics.conditional_chance`). The per-query share is defined only when at least one of the first N
   neighbours is anatomy-correct; the table gives the number of such queries and cases.
3. `pathology_given_anatomy_models`: the same for several models on ONE common set of queries: for each N, the
   queries that have at least one anatomy-correct neighbour among the first N for every model (so a model that
   finds the anatomy less often is not judged on an easier subset).

**Uninformative N.** When N is at least the number of index images of the query's region, the first N can hold
every image of that region, and a model that finds the anatomy perfectly scores the chance value exactly: the
share then says nothing about the finding. Such (query, N) pairs are left out (`drop_uninformative=True`, the
default), so a region has no row at those N and "all regions" pools only the informative queries;
`uninformative_pairs` lists the regions and N concerned.

Intervals are cluster bootstraps over the query cases (same seed, hence the same case draws, for every model);
`difference` = share - chance per query, averaged, with its own interval and two-sided bootstrap p-value, and
`p_holm` Holm-adjusted at each N over the pooled rows and, separately, over all per-region rows
(`holm_over_rows`): a region is called above or below chance only when both its interval and its adjusted p say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cbmir.analyses.retrieval import PAPER_NS, _order, _row, encode
from cbmir.metrics import bootstrap, chance, retrieval
from cbmir.tables import MIN_CASES

ALL = "all regions"


def level_precision(
    ids: np.ndarray,
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    level_labels: Mapping[str, Sequence | np.ndarray],
    cases: Sequence | np.ndarray | None = None,
    *,
    ns: Sequence[int] = PAPER_NS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Modified P@N at each label level (`level_labels`: {"modality": labels per row, "region": ..., ...}).

    Columns: level, N, micro, micro_lo, micro_hi, macro, macro_lo, macro_hi, chance_micro, chance_macro,
    n_queries, n_cases.
    """
    frames = []
    for level, labels in level_labels.items():
        enc = encode(ids, query_rows, index_rows, labels, cases)
        use = [n for n in ns if n <= enc.k]
        cols = np.array(use) - 1
        prec = retrieval.precision_at_n(enc.neighbours, enc.queries, enc.counts)[:, cols]
        expected = chance.expected_precision(enc.queries, enc.counts, enc.k)[:, cols]
        frames.append(pd.DataFrame({"level": level, "N": use, **_row(prec, expected, enc, n_boot, seed, ci)}))
    return _order(pd.concat(frames, ignore_index=True))


def level_contrast(
    ids_by_model: Mapping[str, np.ndarray],
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    level_labels: Mapping[str, Sequence | np.ndarray],
    cases: Sequence | np.ndarray | None = None,
    *,
    coarse: str = "region",
    fine: str = "label",
    ns: Sequence[int] = PAPER_NS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Per model and N: micro modified P@N at the `coarse` and `fine` level, each with its chance value, its
    excess over chance and its chance-corrected value (the mean over queries of (P - chance) / (1 - chance)), and
    the paired difference of the two chance-corrected values (coarse - fine) over the same queries.

    `level_labels` holds one label per manifest row for `coarse` and `fine`. A query counts where it is defined
    at both levels (its class has an index image at each, and chance is below 1). `difference`, `low`, `high`,
    `p_value`: the paired cluster bootstrap over query cases (`bootstrap.paired_bootstrap`, micro, the same case
    draws for every model); `p_holm`: Holm-adjusted over the models at each N. Columns: model, N, <coarse>,
    <coarse> chance, <coarse> excess, <coarse> corrected, <fine>, <fine> chance, <fine> excess, <fine> corrected,
    difference, low, high, p_value, p_holm, p_min, n_queries, n_cases.
    """
    for level in (coarse, fine):
        if level not in level_labels:
            raise KeyError(f"parameter 'level_labels' has no {level!r} level; it has {sorted(level_labels)}")
    frames = []
    for model, ids in ids_by_model.items():
        score, shown = {}, {}
        for level in (coarse, fine):
            enc = encode(ids, query_rows, index_rows, level_labels[level], cases)
            use = [n for n in ns if n <= enc.k]
            cols = np.array(use) - 1
            prec = retrieval.precision_at_n(enc.neighbours, enc.queries, enc.counts)[:, cols]
            expected = chance.expected_precision(enc.queries, enc.counts, enc.k)[:, cols]
            score[level], shown[level] = chance.corrected(prec, expected), (prec, expected)
        both = ~np.isnan(score[coarse]) & ~np.isnan(score[fine])  # [Q, len(use)]
        if not both.any():
            raise ValueError(f"{model}: no query is defined at both the {coarse} and the {fine} level")
        a = np.where(both, score[coarse], np.nan)
        b = np.where(both, score[fine], np.nan)
        one = np.zeros(len(a), np.int64)  # micro: the class does not matter
        pair = bootstrap.paired_bootstrap(a, b, one, enc.cases, n_boot=n_boot, seed=seed, ci=ci)
        row: dict = {"model": model, "N": use}
        for level in (coarse, fine):
            prec, expected = shown[level]
            row[level] = np.nanmean(np.where(both, prec, np.nan), axis=0)
            row[f"{level} chance"] = np.nanmean(np.where(both, expected, np.nan), axis=0)
            row[f"{level} excess"] = row[level] - row[f"{level} chance"]
            row[f"{level} corrected"] = np.nanmean(np.where(both, score[level], np.nan), axis=0)
        row |= {
            c: pair[c].to_numpy()
            for c in ("difference", "low", "high", "p_value", "p_min", "n_queries", "n_cases")
        }
        frames.append(pd.DataFrame(row))
    out = pd.concat(frames, ignore_index=True)
    out.insert(out.columns.get_loc("p_value") + 1, "p_holm", np.nan)
    for _, idx in out.groupby("N").groups.items():
        out.loc[idx, "p_holm"] = bootstrap.holm(out.loc[idx, "p_value"].to_numpy())
    return out


def conditional_shares(
    ids: np.ndarray,
    query_rows: np.ndarray,
    regions: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    ns: Sequence[int] = PAPER_NS,
) -> np.ndarray:
    """Per query and N: label hits / region hits among the first N neighbours; NaN with no region hit. [Q, len(ns)]."""
    ids = np.asarray(ids)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    regions = np.asarray(regions, dtype=object)
    labels = np.asarray(labels, dtype=object)
    if max(ns) > ids.shape[1] or min(ns) < 1:
        raise ValueError(f"parameter 'ns' = {list(ns)} must lie in 1..K = {ids.shape[1]}")
    anat = regions[ids] == regions[query_rows][:, None]
    path = anat & (labels[ids] == labels[query_rows][:, None])
    a = np.cumsum(anat, axis=1)[:, np.array(ns) - 1]
    p = np.cumsum(path, axis=1)[:, np.array(ns) - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(a > 0, p / np.maximum(a, 1), np.nan)


def _conditional_rows(
    shares: np.ndarray,
    expected: np.ndarray,
    groups: np.ndarray,
    case_codes: np.ndarray,
    ns: Sequence[int],
    n_boot: int,
    seed: int,
    ci: float,
) -> list[dict]:
    """One row per (region or all, N): share, its CI, chance, share - chance and its CI, counts."""
    rows = []
    for group in [ALL, *sorted(set(groups) - {ALL})]:
        in_group = np.ones(len(groups), bool) if group == ALL else groups == group
        for j, n in enumerate(ns):
            sel = in_group & ~np.isnan(shares[:, j]) & ~np.isnan(expected)
            row = {
                "region": group,
                "N": n,
                "n_queries": int(sel.sum()),
                "n_cases": len(np.unique(case_codes[sel])),
            }
            if not sel.any():
                continue  # no query of this region has an anatomy-correct neighbour in the first N
            one = np.zeros(int(sel.sum()), np.int64)  # micro: the class does not matter
            obs = bootstrap.bootstrap_ci(
                shares[sel, j], one, case_codes[sel], n_boot=n_boot, seed=seed, ci=ci
            )
            diff = bootstrap.paired_bootstrap(  # share minus chance per query, same case draws: a p-value too
                shares[sel, j], expected[sel], one, case_codes[sel], n_boot=n_boot, seed=seed, ci=ci
            )
            rows.append(
                row
                | {
                    "share": obs["estimate"].iloc[0],
                    "share_lo": obs["low"].iloc[0],
                    "share_hi": obs["high"].iloc[0],
                    "chance": expected[sel].mean(),
                    "difference": diff["difference"].iloc[0],
                    "difference_lo": diff["low"].iloc[0],
                    "difference_hi": diff["high"].iloc[0],
                    "p_value": diff["p_value"].iloc[0],
                    "p_min": diff["p_min"].iloc[0],
                }
            )
    return rows


_COND = [
    "region",
    "N",
    "share",
    "share_lo",
    "share_hi",
    "chance",
    "difference",
    "difference_lo",
    "difference_hi",
    "p_value",
    "p_min",
    "p_holm",
    "n_queries",
    "n_cases",
]


def holm_over_rows(table: pd.DataFrame, min_cases: int = MIN_CASES) -> pd.DataFrame:
    """`table` with `p_holm`: the p-values of share - chance, Holm-adjusted at each N over two families, the
    pooled rows ("all regions", one per model) and the per-region rows (every model and region). Rows with fewer
    than `min_cases` cases are not tested (no verdict is drawn from them) and get no `p_holm`."""
    out = table.copy()
    out["p_holm"] = np.nan
    tested = out["n_cases"] >= min_cases
    pooled = out["region"] == ALL if "region" in out else pd.Series(True, index=out.index)
    for _, part in out[tested].groupby("N"):
        for family in (part[pooled[part.index]], part[~pooled[part.index]]):
            if len(family):
                out.loc[family.index, "p_holm"] = bootstrap.holm(family["p_value"].to_numpy(float))
    return out


def region_index_sizes(index_rows: np.ndarray, regions: Sequence | np.ndarray) -> pd.Series:
    """Index images per region (`regions` holds one value per manifest row)."""
    regions = np.asarray(regions, dtype=object)
    return pd.Series(regions[np.asarray(index_rows, dtype=np.int64)]).astype(str).value_counts().sort_index()


def uninformative_pairs(
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    regions: Sequence | np.ndarray,
    ns: Sequence[int] = PAPER_NS,
) -> pd.DataFrame:
    """The queried regions and N with N >= the region's index images (module docstring): region, index images,
    N left out (comma-separated), queries of the region."""
    regions = np.asarray(regions, dtype=object)
    sizes = region_index_sizes(index_rows, regions)
    queried = pd.Series(regions[np.asarray(query_rows, dtype=np.int64)]).astype(str).value_counts()
    rows = []
    for region in sorted(queried.index):
        size = int(sizes.get(region, 0))
        dropped = [int(n) for n in ns if n >= size]
        if dropped:
            rows.append({"region": region, "index images": size, "N left out": ", ".join(map(str, dropped)),
                         "queries": int(queried[region])})  # fmt: skip
    return pd.DataFrame(rows, columns=["region", "index images", "N left out", "queries"])


def _drop_uninformative(
    shares: np.ndarray, query_rows: np.ndarray, index_rows: np.ndarray, regions: np.ndarray, ns: Sequence[int]
) -> np.ndarray:
    """`shares` [Q, len(ns)] with NaN where N >= the index images of the query's region."""
    sizes = region_index_sizes(index_rows, regions)
    size_q = (
        pd.Series(np.asarray(regions, dtype=object)[query_rows]).astype(str).map(sizes).fillna(0).to_numpy()
    )
    return np.where(np.asarray(ns)[None, :] >= size_q[:, None], np.nan, shares)


def _inputs(query_rows, index_rows, regions, labels, cases):
    query_rows = np.asarray(query_rows, dtype=np.int64)
    index_rows = np.asarray(index_rows, dtype=np.int64)
    regions = np.asarray(regions, dtype=object)
    labels = np.asarray(labels, dtype=object)
    expected = chance.conditional_chance(
        labels[query_rows], regions[query_rows], labels[index_rows], regions[index_rows]
    )
    case_rows = bootstrap.case_codes(None if cases is None else np.asarray(cases, dtype=object), len(labels))
    return expected, regions[query_rows].astype(str), case_rows[query_rows]


def pathology_given_anatomy(
    ids: np.ndarray,
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    regions: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    *,
    ns: Sequence[int] = PAPER_NS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    drop_uninformative: bool = True,
) -> pd.DataFrame:
    """Share of label-correct among region-correct neighbours in the first N, per region and over all, with chance.

    `regions` and `labels` hold one value per manifest row (e.g. "CT/lung" and "CT/lung/lesion"). Columns:
    region ("all regions" first), N, share, share_lo, share_hi, chance, difference (share - chance),
    difference_lo, difference_hi, n_queries, n_cases (queries with an anatomy-correct neighbour in the first N;
    a region and N without any such query has no row). With `drop_uninformative`, (query, N) pairs with N >= the
    index images of the query's region are left out (module docstring).
    """
    ns = [n for n in ns if n <= np.asarray(ids).shape[1]]
    shares = conditional_shares(ids, query_rows, regions, labels, ns)
    if drop_uninformative:
        shares = _drop_uninformative(shares, np.asarray(query_rows), index_rows, regions, ns)
    expected, groups, case_q = _inputs(query_rows, index_rows, regions, labels, cases)
    rows = _conditional_rows(shares, expected, groups, case_q, ns, n_boot, seed, ci)
    return holm_over_rows(pd.DataFrame(rows).reindex(columns=_COND))


def common_queries(shares_by_model: Mapping[str, np.ndarray]) -> np.ndarray:
    """[Q, len(ns)] True where the share is defined (an anatomy-correct neighbour in the first N) for every model."""
    stacked = np.stack([~np.isnan(s) for s in shares_by_model.values()])
    return stacked.all(axis=0)


def pathology_given_anatomy_models(
    ids_by_model: Mapping[str, np.ndarray],
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    regions: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    *,
    ns: Sequence[int] = PAPER_NS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    by_region: bool = False,
    drop_uninformative: bool = True,
) -> pd.DataFrame:
    """`pathology_given_anatomy` over all regions for each model, on the queries common to all models (per N).

    Every model's neighbour table must hold the same `query_rows`. Columns: model, N, share, share_lo, share_hi,
    chance, difference, difference_lo, difference_hi, n_queries, n_cases; with `by_region`, also a `region`
    column after `model` ("all regions" first, then each region, each on the common queries).
    `drop_uninformative` as in `pathology_given_anatomy`.
    """
    if not ids_by_model:
        raise ValueError("parameter 'ids_by_model' is empty")
    k = min(np.asarray(v).shape[1] for v in ids_by_model.values())
    ns = [n for n in ns if n <= k]
    shares = {m: conditional_shares(v, query_rows, regions, labels, ns) for m, v in ids_by_model.items()}
    if drop_uninformative:
        q = np.asarray(query_rows)
        shares = {m: _drop_uninformative(v, q, index_rows, regions, ns) for m, v in shares.items()}
    common = common_queries(shares)
    expected, groups, case_q = _inputs(query_rows, index_rows, regions, labels, cases)
    frames = []
    for model, s in shares.items():
        masked = np.where(common, s, np.nan)
        rows = _conditional_rows(
            masked, expected, groups if by_region else np.full(len(s), ALL), case_q, ns, n_boot, seed, ci
        )
        frames.append(pd.DataFrame(rows).reindex(columns=_COND).assign(model=model))
    out = holm_over_rows(pd.concat(frames, ignore_index=True))
    if not by_region:
        return out.drop(columns="region").reindex(columns=["model", *_COND[1:]])
    return out.reindex(columns=["model", *_COND])


def classes_per_region(label_names: Sequence[str]) -> pd.DataFrame:
    """How many label classes each modality/region has (the conditional study needs at least two)."""
    regions = pd.Series(["/".join(str(c).split("/")[:2]) for c in label_names], name="region")
    return regions.value_counts().rename("classes").reset_index().sort_values("region", ignore_index=True)
