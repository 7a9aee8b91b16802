"""Study: does retrieval get better or worse as the index grows?

**What is subsampled.** Cases (patients), not images: slices of one volume enter or leave the index together.
Each index case is assigned to the class it has most images of (ties: the first label in sorted order); within
each class stratum, round(fraction x cases), at least one, are kept at random (seeded), with all their index
images. Each fraction below 1 is drawn `repeats` times.

**Which metrics.** The paper's modified P@N divides by min(N, n_c), which shrinks with the index: at a tenth of the
index a class of 30 images keeps 3, and P@10 becomes P@3, so the y-axis would change meaning along the x-axis.
This study reports **plain P@N** (hits among the first N / N) and **hit@N** (whether any of the first N has the
query's label), at fixed N: their denominator N stays the same at every size, but what they can reach does not.
Plain P@N cannot exceed min(n_c, N) / N, and n_c (index images of the query's class) shrinks in a smaller index;
hit@N cannot exceed 1, or 0 where the class is missing. That mean reachable value is the `ceiling` column. Their
chance values (n_c / M and 1 - C(M - n_c, N) / C(M, N) of the subsample) change with the size as well, so a change
is read from the share of the room between chance and the ceiling, (P - chance) / (ceiling - chance)
(`cbmir.analyses.findings.index_size_sentence`). The queries are fixed: every test query
whose class has an image in the full index; one whose class is missing from a subsample scores 0 there (as it
would in a real index that small), with chance 0.

**Bands.** Two sources of uncertainty: which queries (cases) were drawn, and which index cases were kept. For each
repeat, the cluster bootstrap over query cases gives B resampled values (the same case draws for every repeat and
size: one seed); the B x repeats values of all repeats are pooled and their 2.5 / 97.5 percentiles are the band.
The pooled distribution is the mixture over repeats of the query-sampling distributions, so its spread holds both
the query-case sampling and the repeat-to-repeat spread (also reported alone as `repeat_sd`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from cbmir.metrics import bootstrap, chance, retrieval
from cbmir.progress import hide_progress

SearchFn = Callable[[np.ndarray, int], np.ndarray]


def _main_classes(labels: np.ndarray, cases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct cases in sorted order, each one's most frequent label; ties: the first label in sorted order),
    by one sort of the (case, label) counts: at 1.6 M rows a loop over rows and then over classes took minutes."""
    counts = pd.DataFrame({"case": cases, "label": labels}).value_counts(sort=False).reset_index(name="n")
    counts = counts.sort_values(["case", "n", "label"], ascending=[True, False, True], kind="stable")
    first = counts.drop_duplicates("case")
    return first["case"].to_numpy(), first["label"].to_numpy()


def case_classes(labels: np.ndarray, cases: np.ndarray) -> dict:
    """{case: its most frequent label} over the given rows (ties: the first label in sorted order)."""
    return dict(zip(*_main_classes(np.asarray(labels), np.asarray(cases)), strict=True))


def stratified_case_subsample(
    index_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | None,
    fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Manifest rows of a case-level subsample of the index, stratified by each case's main class; sorted.

    `labels` and `cases` hold one value per manifest row (`cases=None`: every row its own case).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"parameter 'fraction' = {fraction} must be in (0, 1]")
    index_rows = np.asarray(index_rows, dtype=np.int64)
    labels = np.asarray(labels, dtype=object)
    case_of = bootstrap.case_codes(None if cases is None else np.asarray(cases, dtype=object), len(labels))
    if fraction == 1:
        return np.sort(index_rows)
    idx_cases = case_of[index_rows]
    uniq, main = _main_classes(labels[index_rows].astype(str), idx_cases)
    keep: list[np.ndarray] = []
    for _, stratum in pd.Series(uniq).groupby(main, sort=True):  # strata in label order, cases sorted within
        m = max(1, int(round(fraction * len(stratum))))
        keep.append(rng.choice(stratum.to_numpy(), size=m, replace=False))
    return np.sort(index_rows[np.isin(idx_cases, np.concatenate(keep))])


def sample_query_cases(
    query_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | None,
    max_cases: int | None,
    seed: int = 0,
) -> np.ndarray:
    """The query rows of about `max_cases` of their cases (all rows of each drawn case; sorted): a seeded sample
    stratified by each case's main class with at least one case per class, so every class stays in the macro
    average. `max_cases=None`, or no fewer query cases than it: every query row.

    At 1.6 M images the study searches 10 indexes per model; a few thousand query cases bound that cost, and the
    bands, drawn over the sampled cases, widen as they should.
    """
    query_rows = np.asarray(query_rows, dtype=np.int64)
    if max_cases is None:
        return np.sort(query_rows)
    if max_cases < 1:
        raise ValueError(f"parameter 'max_cases' = {max_cases} must be >= 1 (or None for every query)")
    labels = np.asarray(labels, dtype=object)
    case_of = bootstrap.case_codes(None if cases is None else np.asarray(cases, dtype=object), len(labels))
    n_cases = len(np.unique(case_of[query_rows]))
    if max_cases >= n_cases:
        return np.sort(query_rows)
    rng = np.random.default_rng([seed, 4])  # its own stream: the index subsamples do not shift with it
    return stratified_case_subsample(query_rows, labels, cases, max_cases / n_cases, rng)


def query_note(
    queries: np.ndarray, all_queries: np.ndarray, cases: Sequence | np.ndarray | None, search: str
) -> str:
    """One sentence of method: which test queries the study used (`queries` among `all_queries`, manifest rows;
    `cases` one id per manifest row or None) and how it searched."""
    queries, all_queries = np.asarray(queries, dtype=np.int64), np.asarray(all_queries, dtype=np.int64)
    n = int(max(queries.max(initial=-1), all_queries.max(initial=-1))) + 1
    case_of = bootstrap.case_codes(None if cases is None else np.asarray(cases, dtype=object)[:n], n)
    n_cases, all_cases = len(np.unique(case_of[queries])), len(np.unique(case_of[all_queries]))
    if len(queries) == len(all_queries):
        which = f"All {len(all_queries):,} test queries ({all_cases:,} cases) are used"
    else:
        which = (
            f"A seeded sample of {n_cases:,} of the {all_cases:,} test-query cases ({len(queries):,} of "
            f"{len(all_queries):,} queries) is used, stratified by each case's main class with at least one case "
            "per class (so the micro average gives rare classes slightly more weight than the full query set)"
        )
    return f"{which}; each index subsample is searched with {search}."


def exact_search(
    vectors,
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    k_full: int = 300,
) -> SearchFn:
    """A `search(rows, k)` for `index_size_study` that is exact (flat) and answers every subsample of
    `index_rows` from ONE search of the whole index: the first k of a subsample's rows in the full ranking are its
    k nearest, so only queries with fewer than k of them among their `k_full` nearest are searched again, against
    the subsample. At 1.6 M images this replaces ten exact searches per model by about one. `vectors`: a
    `ManifestVectors` (or an array with a row per manifest row); `cases`: one id per manifest row, for the
    same-case exclusion of `cbmir.search.search_rows`. The same neighbours as a search of each subsample, up to
    the order of exactly tied scores."""
    from cbmir.search import max_k, search_rows

    query_rows = np.asarray(query_rows, dtype=np.int64)
    index_rows = np.asarray(index_rows, dtype=np.int64)
    case_arr = None if cases is None else np.asarray(cases)

    def direct(rows: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
        return search_rows(vectors, rows, queries, k=k, cases=case_arr, index_type="flat", progress=False).ids

    limit = max_k(
        len(index_rows), *(() if case_arr is None else (case_arr[index_rows], case_arr[query_rows]))
    )
    full = direct(index_rows, query_rows, min(k_full, limit))

    def search(rows: np.ndarray, k: int) -> np.ndarray:
        if k > full.shape[1]:
            return direct(np.asarray(rows, dtype=np.int64), query_rows, k)
        inside = np.isin(full, rows)
        order = np.argsort(~inside, axis=1, kind="stable")[:, :k]  # a subsample's rows, in full-ranking order
        ids = np.take_along_axis(full, order, axis=1)
        short = inside.sum(axis=1) < k
        if short.any():
            ids[short] = direct(np.asarray(rows, dtype=np.int64), query_rows[short], k)
        return ids

    return search


def room_share(value, chance, ceiling):
    """(value - chance) / (ceiling - chance): the share of the room between chance and the highest reachable value
    that a curve point reaches (1 = the ceiling, 0 = chance); NaN where the ceiling is not above chance."""
    value, chance, ceiling = (np.asarray(a, dtype=np.float64) for a in (value, chance, ceiling))
    room = ceiling - chance
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(room > 1e-9, (value - chance) / room, np.nan)


def _scores(
    ids: np.ndarray, q_codes: np.ndarray, row_codes: np.ndarray, ns: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(plain P@N [Q, len(ns)], hit@N [Q, len(ns)]) from neighbour rows; no NaN (a missing class scores 0)."""
    rel = row_codes[ids] == q_codes[:, None]
    hits = np.cumsum(rel, axis=1)[:, np.array(ns) - 1]
    return hits / np.array(ns), (hits > 0).astype(np.float64)


def _chance(q_codes: np.ndarray, counts: np.ndarray, ns: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    k = max(ns)
    cols = np.array(ns) - 1
    plain = np.nan_to_num(chance.expected_plain_precision(q_codes, counts, k)[:, cols])
    hit = np.nan_to_num(chance.expected_hit(q_codes, counts, k)[:, cols])
    return plain, hit


def index_size_study(
    search: SearchFn,
    query_rows: np.ndarray,
    index_rows: np.ndarray,
    labels: Sequence | np.ndarray,
    cases: Sequence | np.ndarray | None = None,
    *,
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    repeats: int = 5,
    ns: Sequence[int] = (1, 5, 10),
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    progress: bool = True,
) -> pd.DataFrame:
    """Plain P@N and hit@N (micro and macro) against index size, with chance and combined bands.

    `search(rows, k)` returns the manifest rows [Q, k] of the k nearest of `rows` for each of `query_rows` (in
    their order), e.g. `lambda rows, k: cbmir.search.search_rows(emb, rows, query_rows, k=k, ...).ids`.
    Columns: fraction, index_images (mean over repeats), index_cases (an integer: every repeat keeps the same
    number of cases per stratum), metric ("plain P@N" or "hit@N"), N, average, estimate (mean over repeats), low,
    high (pooled band), chance, ceiling (the mean of the highest value each query can reach: min(n_c, N) / N for
    plain P@N, 1 for hit@N, 0 where the class is missing), repeat_sd, repeats, n_queries, n_cases (query cases),
    share, share_low, share_high (estimate and band as a share of the room between chance and ceiling, `room_share`:
    what a change is judged on). `fraction` is the target share of each stratum's cases: with at least one case
    kept per stratum, a small index keeps more than that (compare `index_images` with the full index's).
    """
    from tqdm.auto import tqdm

    if repeats < 1:
        raise ValueError(f"parameter 'repeats' = {repeats} must be >= 1")
    labels = np.asarray(labels, dtype=object)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    index_rows = np.asarray(index_rows, dtype=np.int64)
    classes, row_codes = retrieval.encode_labels(labels)
    full_counts = np.bincount(row_codes[index_rows], minlength=len(classes))
    q_all = row_codes[query_rows]
    valid = full_counts[q_all] > 0  # fixed query set: class present in the full index
    if not valid.any():
        raise ValueError("no query has its class in the index")
    q = q_all[valid]
    case_rows = bootstrap.case_codes(None if cases is None else np.asarray(cases, dtype=object), len(labels))
    _, q_cls = np.unique(q, return_inverse=True)
    _, g = np.unique(case_rows[query_rows][valid], return_inverse=True)
    ns = sorted(ns)
    rng = np.random.default_rng(seed)
    plan = [(f, r) for f in fractions for r in range(repeats if f < 1 else 1)]
    results: dict[float, list] = {}
    width = len(ns)
    for fraction, _ in tqdm(plan, desc="index sizes", disable=hide_progress(progress)):
        sub = stratified_case_subsample(index_rows, labels, cases, fraction, rng)
        k = min(ns[-1], len(sub))
        ids = np.asarray(search(sub, k))
        if ids.shape != (len(query_rows), k):
            raise ValueError(f"search returned shape {ids.shape}; expected ({len(query_rows)}, {k})")
        if not np.isin(ids, sub).all():
            raise ValueError("search returned rows outside the subsampled index")
        use = [n for n in ns if n <= k]  # an N larger than the subsample stays NaN
        counts = np.bincount(row_codes[sub], minlength=len(classes))
        values = np.full((len(q), 2 * width), np.nan)
        expected = np.full((len(q), 2 * width), np.nan)
        reachable = np.full((len(q), 2 * width), np.nan)
        n_c = counts[q][:, None]
        reachable[:, : len(use)] = np.minimum(n_c, np.array(use)[None, :]) / np.array(use)[None, :]
        reachable[:, width : width + len(use)] = (n_c > 0).astype(np.float64)
        values[:, : len(use)], values[:, width : width + len(use)] = _scores(ids[valid], q, row_codes, use)
        expected[:, : len(use)], expected[:, width : width + len(use)] = _chance(q, counts, use)
        per_avg = {
            average: (
                bootstrap.point_estimate(values, q_cls, average),
                bootstrap.resample_stats(values, q_cls, g, average, n_boot, seed),
                bootstrap.point_estimate(expected, q_cls, average),
                bootstrap.point_estimate(reachable, q_cls, average),
            )
            for average in bootstrap.AVERAGES
        }
        results.setdefault(fraction, []).append((len(sub), len(np.unique(case_rows[sub])), per_avg))
    rows = []
    for fraction, reps in results.items():
        for average in bootstrap.AVERAGES:
            points = np.stack([r[2][average][0] for r in reps])  # [repeats, 2 * len(ns)]
            pooled = np.vstack([r[2][average][1] for r in reps])  # [repeats * n_boot, 2 * len(ns)]
            chances = np.stack([r[2][average][2] for r in reps])
            ceilings = np.stack([r[2][average][3] for r in reps])
            n_index_cases = sorted({r[1] for r in reps})
            low, high = bootstrap.percentile_interval(pooled, ci)
            for j in range(2 * width):
                rows.append(
                    {
                        "fraction": fraction,
                        "index_images": float(np.mean([r[0] for r in reps])),
                        "index_cases": n_index_cases[0]
                        if len(n_index_cases) == 1
                        else float(np.mean(n_index_cases)),
                        "metric": ("plain P@N", "hit@N")[j // width],
                        "N": ns[j % width],
                        "average": average,
                        "estimate": points[:, j].mean(),
                        "low": low[j],
                        "high": high[j],
                        "chance": chances[:, j].mean(),
                        "ceiling": ceilings[:, j].mean(),
                        "repeat_sd": points[:, j].std(ddof=1) if len(reps) > 1 else 0.0,
                        "repeats": len(reps),
                        "n_queries": len(q),
                        "n_cases": int(g.max()) + 1,
                    }
                )
    out = pd.DataFrame(rows)
    for col, src in (("share", "estimate"), ("share_low", "low"), ("share_high", "high")):
        out[col] = room_share(out[src], out["chance"], out["ceiling"])
    return out


def realised_note(study: pd.DataFrame) -> str:
    """What each fraction of `index_size_study` kept, as a share of the full index's cases and images (every
    class keeps a case, so a small fraction keeps more than asked): 'Realised index per fraction: 0.1 -> 23 of 60
    cases (38 %) and 63 % of the images; ...'."""
    per = study.groupby("fraction", sort=True)[["index_cases", "index_images"]].mean()
    full = per.iloc[-1]
    bits = [
        f"{f:g} -> {c:,.0f} of {full['index_cases']:,.0f} cases ({100 * c / full['index_cases']:.0f} %) and "
        f"{100 * i / full['index_images']:.0f} % of the images"
        for f, (c, i) in per.iterrows()
    ]
    return "Realised index per fraction (mean over repeats): " + "; ".join(bits) + "."
