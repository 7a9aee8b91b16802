"""Study: how precise is top-N retrieval, overall, per group (source, dataset, ...) and per class.

Inputs are plain arrays: `ids` [Q, K] the manifest rows of each query's ranked neighbours, `query_rows` [Q] and
`index_rows` [I] manifest rows, `labels` one label per manifest row (at the level scored), `cases` one case id
per manifest row (the manifest's `patient_id`; None: every row its own case). Every interval is a cluster
bootstrap over the query cases (`cbmir.metrics.bootstrap`), every table carries the chance value of its metric
under a random ranking (`cbmir.metrics.chance`) and its numbers of queries and cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cbmir.metrics import bootstrap, chance, retrieval

PAPER_NS = (1, 3, 5, 10)


@dataclass(frozen=True)
class Encoded:
    """Class codes of a neighbour table: neighbours [Q, K], queries [Q], index counts [C], names [C], cases [Q]."""

    neighbours: np.ndarray
    queries: np.ndarray
    counts: np.ndarray
    classes: np.ndarray
    cases: np.ndarray

    @property
    def k(self) -> int:
        return self.neighbours.shape[1]


def encode(
    ids: np.ndarray,
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | pd.Series | None = None,
    max_n: int | None = None,
) -> Encoded:
    """Class codes of the neighbours, the queries and the index counts; case codes of the queries."""
    ids = np.asarray(ids)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    index_rows = np.asarray(index_rows, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[0] != len(query_rows) or ids.shape[1] == 0:
        raise ValueError(
            f"parameter 'ids' must be [Q, K] with Q = {len(query_rows)} queries; got {ids.shape}"
        )
    if max_n is not None:
        if not 1 <= max_n <= ids.shape[1]:
            raise ValueError(f"parameter 'max_n' = {max_n} must be between 1 and K = {ids.shape[1]}")
        ids = ids[:, :max_n]
    classes, codes = retrieval.encode_labels(labels)
    rows = len(codes)
    for name, arr in (("ids", ids), ("query_rows", query_rows), ("index_rows", index_rows)):
        if arr.size and (arr.min() < 0 or arr.max() >= rows):
            raise ValueError(f"parameter '{name}' holds rows outside the {rows} rows of 'labels'")
    counts = np.bincount(codes[index_rows], minlength=len(classes))
    case_rows = bootstrap.case_codes(None if cases is None else np.asarray(cases, dtype=object), rows)
    return Encoded(codes[ids], codes[query_rows], counts, classes, case_rows[query_rows])


def _row(values: np.ndarray, expected: np.ndarray, enc: Encoded, n_boot: int, seed: int, ci: float) -> dict:
    """Micro and macro estimate with cluster-bootstrap CIs, chance and counts, for per-query values [Q, J]."""
    out: dict = {}
    for average in bootstrap.AVERAGES:
        res = bootstrap.bootstrap_ci(
            values, enc.queries, enc.cases, average=average, n_boot=n_boot, seed=seed, ci=ci
        )
        out[average] = res["estimate"].to_numpy()
        out[f"{average}_lo"] = res["low"].to_numpy()
        out[f"{average}_hi"] = res["high"].to_numpy()
        out["n_queries"], out["n_cases"] = int(res["n_queries"].iloc[0]), int(res["n_cases"].iloc[0])
    micro, macro = retrieval.micro_macro(expected, enc.queries)
    out["chance_micro"], out["chance_macro"] = micro, macro
    return out


def _two_d(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 2 else x[:, None]


def precision_curves(
    ids: np.ndarray,
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    *,
    max_n: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Modified and plain P@N for N = 1..K, micro and macro, with cluster-bootstrap bands and chance.

    Columns: N, micro, micro_lo, micro_hi, macro, macro_lo, macro_hi, chance_micro, chance_macro (modified
    P@N), plain, plain_lo, plain_hi, chance_plain (micro plain P@N), map (micro mAP@N), hit_rate, chance_hit
    (micro hit@N), n_queries, n_cases. `attrs["n_excluded"]`: queries whose class has no index image.
    """
    enc = encode(ids, query_rows, index_rows, labels, cases, max_n)
    args = (enc.neighbours, enc.queries, enc.counts)
    prec = retrieval.precision_at_n(*args)
    row = _row(prec, chance.expected_precision(enc.queries, enc.counts, enc.k), enc, n_boot, seed, ci)
    plain = bootstrap.bootstrap_ci(
        retrieval.plain_precision_at_n(*args), enc.queries, enc.cases, n_boot=n_boot, seed=seed, ci=ci
    )
    ok = ~np.isnan(prec[:, 0])
    expected_hit = chance.expected_hit(enc.queries, enc.counts, enc.k)
    out = pd.DataFrame(
        {
            "N": np.arange(1, enc.k + 1),
            **{key: row[key] for key in ("micro", "micro_lo", "micro_hi", "macro", "macro_lo", "macro_hi")},
            "chance_micro": row["chance_micro"],
            "chance_macro": row["chance_macro"],
            "plain": plain["estimate"].to_numpy(),
            "plain_lo": plain["low"].to_numpy(),
            "plain_hi": plain["high"].to_numpy(),
            "chance_plain": row["chance_micro"],  # E[plain P@N] = n_c / M as for the modified one
            "map": np.nanmean(retrieval.average_precision_at_n(*args)[ok], axis=0),
            "hit_rate": np.nanmean(retrieval.hit_at_n(*args)[ok], axis=0),
            "chance_hit": expected_hit[ok].mean(axis=0),
            "n_queries": row["n_queries"],
            "n_cases": row["n_cases"],
        }
    )
    out.attrs["n_excluded"] = int((~ok).sum())
    return out


def curve_points(k: int, middle: int | None = None) -> tuple[int, ...]:
    """The points a curve's change is judged at: N = 1, a middle N (given, else the middle of 1..K, as
    `findings.shape_sentence` picks it) and N = K."""
    if middle is None and k > 2:
        middle = k // 2 + 1
    return tuple(sorted({1, k} | ({middle} if middle is not None and 1 < middle < k else set())))


def curve_changes(
    ids: np.ndarray,
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    *,
    middle: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """How modified P@N changes between the points of `curve_points` (1 -> middle, middle -> K, 1 -> K), paired:
    each query's P@N at the later point minus its P@N at the earlier one, over the same queries and the same case
    draws (`bootstrap.paired_bootstrap`, micro and macro).

    Columns: average, from_N, to_N, difference, low, high, p_value, p_min, n_cases, n_queries. The draws are those
    of `precision_curves` with the same `seed`, so the bands and the differences come from the same resamples.
    """
    enc = encode(ids, query_rows, index_rows, labels, cases)
    prec = retrieval.precision_at_n(enc.neighbours, enc.queries, enc.counts)
    points = curve_points(enc.k, middle)
    columns = [
        "average",
        "from_N",
        "to_N",
        "difference",
        "low",
        "high",
        "p_value",
        "p_min",
        "n_cases",
        "n_queries",
    ]
    if len(points) < 2:
        return pd.DataFrame(columns=columns)  # k = 1: nothing to compare
    pairs = list(zip(points, points[1:], strict=False))
    if len(points) > 2:
        pairs.append((points[0], points[-1]))
    later = prec[:, [b - 1 for _, b in pairs]]
    earlier = prec[:, [a - 1 for a, _ in pairs]]
    frames = []
    for average in bootstrap.AVERAGES:
        res = bootstrap.paired_bootstrap(
            later, earlier, enc.queries, enc.cases, average=average, n_boot=n_boot, seed=seed, ci=ci
        )
        frames.append(
            res.drop(columns="N").assign(
                average=average, from_N=[a for a, _ in pairs], to_N=[b for _, b in pairs]
            )
        )
    return pd.concat(frames, ignore_index=True)[columns]


def paper_table(
    ids: np.ndarray,
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
    """The paper's modified P@1/3/5/10, then plain P@N, R-precision and MAP@R (R = min(n_c, K)); one row each.

    Columns: metric, N (NaN for the R-based metrics), micro, micro_lo, micro_hi, macro, macro_lo, macro_hi,
    chance_micro, chance_macro, n_queries, n_cases.
    """
    enc = encode(ids, query_rows, index_rows, labels, cases)
    ns = [n for n in ns if n <= enc.k]
    if not ns:
        raise ValueError(f"parameter 'ns' has no N <= K = {enc.k}")
    cols = np.array(ns) - 1
    args = (enc.neighbours, enc.queries, enc.counts)
    parts = [
        (
            "P@{}",
            ns,
            retrieval.precision_at_n(*args)[:, cols],
            chance.expected_precision(*args[1:], enc.k)[:, cols],
        ),
        (
            "plain P@{}",
            ns,
            retrieval.plain_precision_at_n(*args)[:, cols],
            chance.expected_plain_precision(*args[1:], enc.k)[:, cols],
        ),
        (
            "R-precision",
            [np.nan],
            retrieval.r_precision(*args),
            chance.expected_r_precision(*args[1:], enc.k),
        ),
        ("MAP@R", [np.nan], retrieval.map_at_r(*args), chance.expected_map_at_r(*args[1:], enc.k)),
    ]
    frames = []
    for name, n_values, values, expected in parts:
        row = _row(_two_d(values), _two_d(expected), enc, n_boot, seed, ci)
        df = pd.DataFrame({"metric": [name.format(n) for n in n_values], "N": n_values})
        for key, value in row.items():
            df[key] = value
        frames.append(df)
    return _order(pd.concat(frames, ignore_index=True))


_COLUMNS = [
    "micro",
    "micro_lo",
    "micro_hi",
    "macro",
    "macro_lo",
    "macro_hi",
    "chance_micro",
    "chance_macro",
    "n_queries",
    "n_cases",
]


def _order(df: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in df.columns if c not in _COLUMNS]
    return df[first + _COLUMNS]


def breakdown(
    ids: np.ndarray,
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    groups: Sequence | np.ndarray | pd.Series,
    cases: Sequence | np.ndarray | None = None,
    *,
    name: str = "group",
    ns: Sequence[int] = PAPER_NS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Modified P@N of the queries of each group (`groups`: one value per manifest row, e.g. `source`).

    n_c is counted over the whole index. Columns: <name>, N, micro.., macro.., chance_micro, chance_macro,
    n_queries, n_cases (one row per group and N).
    """
    enc = encode(ids, query_rows, index_rows, labels, cases)
    ns = [n for n in ns if n <= enc.k]
    group_of = np.asarray(groups, dtype=object)[np.asarray(query_rows, dtype=np.int64)].astype(str)
    prec = retrieval.precision_at_n(enc.neighbours, enc.queries, enc.counts)[:, np.array(ns) - 1]
    expected = chance.expected_precision(enc.queries, enc.counts, enc.k)[:, np.array(ns) - 1]
    frames = []
    for g in sorted(set(group_of)):
        sel = group_of == g
        if np.isnan(prec[sel, 0]).all():
            continue  # no query of this group has its class in the index
        sub = Encoded(enc.neighbours[sel], enc.queries[sel], enc.counts, enc.classes, enc.cases[sel])
        row = _row(prec[sel], expected[sel], sub, n_boot, seed, ci)
        frames.append(pd.DataFrame({name: g, "N": ns, **row}))
    return without_single_case_intervals(_order(pd.concat(frames, ignore_index=True)))


def informative_columns(
    table: pd.DataFrame, rows: np.ndarray, candidates: Sequence[str] = ("source", "dataset", "modality")
) -> list[str]:
    """The candidate metadata columns that take at least two values among `rows` (a breakdown worth showing)."""
    return [c for c in candidates if c in table.columns and table[c].iloc[rows].nunique() >= 2]


def per_class(
    ids: np.ndarray,
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
    """One row per class present among the queries: class, n_queries, n_cases, n_index, chance (n_c / M), and for
    each N in `ns`: P@N (mean over the class's queries), P@N_lo, P@N_hi (cluster bootstrap within the class).

    Rows are ordered by the evidence behind them: most query cases first, then most queries, then the class name
    (at 161 classes the reader meets the well-measured classes first). A class absent from the index has
    n_index = 0 and NaN values.
    """
    enc = encode(ids, query_rows, index_rows, labels, cases)
    ns = [n for n in ns if n <= enc.k]
    prec = retrieval.precision_at_n(enc.neighbours, enc.queries, enc.counts)[:, np.array(ns) - 1]
    m = enc.counts.sum()
    rows = []
    for c in np.unique(enc.queries):
        sel = enc.queries == c
        row = {
            "class": enc.classes[c],
            "n_queries": int(sel.sum()),
            "n_cases": len(np.unique(enc.cases[sel])),
            "n_index": int(enc.counts[c]),
            "chance": enc.counts[c] / m if enc.counts[c] else np.nan,
        }
        if enc.counts[c]:
            res = bootstrap.bootstrap_ci(
                prec[sel], enc.queries[sel], enc.cases[sel], n_boot=n_boot, seed=seed, ci=ci
            )
        for j, n in enumerate(ns):
            if enc.counts[c]:
                row[f"P@{n}"], row[f"P@{n}_lo"], row[f"P@{n}_hi"] = res.loc[j, ["estimate", "low", "high"]]
            else:
                row[f"P@{n}"] = row[f"P@{n}_lo"] = row[f"P@{n}_hi"] = np.nan
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(
        ["n_cases", "n_queries", "class"], ascending=[False, False, True], ignore_index=True
    )
    return without_single_case_intervals(table)


def best_worst(
    table: pd.DataFrame, value: str, n: int = 10, label: str = "class", min_cases: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(best, worst) rows of `table` by `value`, never the same row in both (rows with NaN `value` left out).

    Only rows with at least `min_cases` in `n_cases` are ranked (at 161 classes, most with one test case, the
    extremes would otherwise be single queries at 0 or 1). With at least 2n rows: the n highest and the n lowest.
    With fewer, each row is shown once: the upper half (rounded up) as best, the rest as worst. Best is sorted
    high to low, worst low to high; ties: more cases first (where `n_cases` exists), then by `label`.
    """
    if n < 1:
        raise ValueError(f"parameter 'n' = {n} must be >= 1")
    if min_cases < 1:
        raise ValueError(f"parameter 'min_cases' = {min_cases} must be >= 1")
    if value not in table.columns:
        raise ValueError(f"parameter 'value' is {value!r}; the table has {list(table.columns)}")
    keep = table[value].notna()
    if "n_cases" in table.columns:
        keep &= table["n_cases"] >= min_cases
    elif min_cases > 1:
        raise ValueError("parameter 'min_cases' needs an 'n_cases' column in the table")
    keys = [value, *(["n_cases"] if "n_cases" in table.columns else []), label]
    more_cases = [False] * (len(keys) - 2)
    ranked = table[keep].sort_values(keys, ascending=[False, *more_cases, True], ignore_index=True)
    n_best = n if len(ranked) >= 2 * n else (len(ranked) + 1) // 2
    n_worst = n if len(ranked) >= 2 * n else len(ranked) - n_best
    best = ranked.iloc[:n_best]
    rest = ranked.iloc[n_best:].sort_values(keys, ascending=[True, *more_cases, True], ignore_index=True)
    return best, rest.iloc[:n_worst]


def gallery_queries(
    query_rows: np.ndarray, labels: Sequence | np.ndarray, n: int = 8, seed: int = 0
) -> list[int]:
    """Positions (into `query_rows`) of up to `n` queries to show: one per class first, in a seeded random order.

    `labels` holds one label per manifest row.
    """
    labels = np.asarray(labels, dtype=object)
    order = np.random.default_rng(seed).permutation(len(query_rows))
    seen: set = set()
    first, rest = [], []
    for pos in order:
        label = labels[query_rows[pos]]
        (rest if label in seen else first).append(int(pos))
        seen.add(label)
    return (first + rest)[:n]


def without_single_case_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """Blank the interval bounds (`*_lo`, `*_hi`) of rows resting on one case: a bootstrap over a single case
    resamples nothing, so its zero-width interval would look like certainty (the estimate stays, beside n_cases)."""
    bounds = [c for c in table.columns if str(c).endswith(("_lo", "_hi"))]
    if "n_cases" in table.columns and bounds:
        table.loc[table["n_cases"] < 2, bounds] = np.nan
    return table
