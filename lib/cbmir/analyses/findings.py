"""Sentences written from the tables of the other analyses: direction, size, CI, p-value and number of cases.

Rules (so that no sentence claims more than its numbers carry):
- A difference is called "better"/"worse" (or "above"/"below" chance) only when its 95 % interval excludes 0
  (or the chance value); otherwise the sentence says "not distinguishable", naming the baseline.
- A retrieval curve "rises" or "falls" between two N only when the paired difference of the same queries between
  them has a 95 % interval that excludes 0 (`retrieval.curve_changes`); it "flattens" only when it changes that
  way up to a middle point and not after it; otherwise it "is not shown to change". Without the paired
  differences, the bands at the two points must not overlap (a conservative, unpaired rule).
  Index-size curves are judged by that unpaired rule (each index size is its own subsample), on the share of the room between chance and the highest reachable
  value, (P - chance) / (ceiling - chance) (both change with the index), from the smallest to the full index only
  (`index_size_change`, shared by the sentence and the claim verdict).
- With fewer than MIN_CASES independent cases, a percentile bootstrap has too few distinct resamples to bound
  anything (one case gives a zero-width interval): no direction is claimed, the sentence says "too few cases".
- Numbers are quoted rounded to 3 decimals (differences with their sign), p-values to 3 decimals or "< 0.001".
  Where a bound of a difference's interval rounds to 0, the sentence says whether the interval reaches 0.
- A bound within ZERO_TOL of the reference (floating-point noise, e.g. 1.1e-17) counts as touching it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cbmir.analyses.levels import ALL as ALL_REGIONS
from cbmir.tables import (
    ALPHA,
    MIN_CASES,
    at_p_floor,
    few_cases,
    outside_interval,
    round_up,
    rounds_up_to_alpha,
    zero_width,
)

DIGITS = 3
LIST_LIMIT = 12  # a sentence names at most this many classes; beyond, it counts them
CHANCE_VERDICTS = {
    1: "above chance",
    -1: "below chance",
    0: "not distinguishable from chance",
}  # by `direction`
# a smallest index above this share of the full one's images spans too little of the index size to test the claim
NARROW_INDEX_RANGE = 0.5
ZERO_TOL = 1e-9  # a bound this close to its reference value is floating-point noise: it touches the reference
BASELINE_NAMES = {"raw-pixels": "the raw-pixel baseline", "random-vit": "the random-ViT baseline"}
IMAGE_TEXT_MODELS = ("biomedclip", "medclip", "clip-vit-l14")


def nothing_to_compare(models: Sequence[str], baselines: Sequence[str] = tuple(BASELINE_NAMES)) -> str:
    """Why a comparison with the baselines is empty: no baseline among `models`, or no model besides them."""
    present = [m for m in models if m in baselines]
    if not present:
        return (
            f"None of the {len(models)} models of this run is a baseline ({', '.join(baselines)}): "
            "there is nothing to compare them against."
        )
    return f"Only baselines ran ({', '.join(present)}): there is no other model to compare with them."


def num(x: float) -> str:
    """A value rounded to 3 decimals (a rounded negative zero reads 0.000, as in the tables)."""
    text = f"{x:.{DIGITS}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def tied_at_shown(frame: pd.DataFrame, value: str, target: float, name: str = "model") -> list[str]:
    """The `name`s of the rows of `frame` whose `value` reads the same as `target` at `DIGITS` decimals: values a
    reader of the tables cannot tell apart, so no sentence may rank them."""
    return [str(m) for m, v in zip(frame[name], frame[value], strict=True) if num(v) == num(target)]


def shown_order(frame: pd.DataFrame, value: str, name: str = "model") -> list[tuple[list[str], str]]:
    """The rows of `frame` from the highest `value` down, grouped by the value as shown (`DIGITS` decimals):
    [([names], "0.912"), ...]; names within a group tie in the tables."""
    groups: dict[str, list[str]] = {}
    for _, r in frame.sort_values(value, ascending=False).iterrows():
        groups.setdefault(num(r[value]), []).append(str(r[name]))
    return [(names, shown) for shown, names in groups.items()]


def order_text(order: list[tuple[list[str], str]]) -> str:
    """`shown_order` as text: 'a = b (0.912) > c (0.850)'; 'all 9 at 1.000' when every row ties."""
    if len(order) == 1 and len(order[0][0]) > 2:
        return f"all {len(order[0][0])} at {order[0][1]}"
    return " > ".join(f"{' = '.join(names)} ({shown})" for names, shown in order)


def _tied_with_best(table: pd.DataFrame) -> list[str]:
    """The models of `summary.model_table` other than `attrs["best"]` whose micro P@N at the smallest N reads the
    same as the best's: they share its rank."""
    top = str(table.attrs.get("best", ""))
    first = table[(table["N"] == table["N"].min()) & (table["average"] == "micro")]
    row = first[first["model"] == top]
    if row.empty:
        return []
    return [m for m in tied_at_shown(first, "estimate", row["estimate"].iloc[0]) if m != top]


def signed(x: float) -> str:
    """A difference rounded to 3 decimals with its sign (+0.000 for a rounded zero)."""
    text = f"{x:+.{DIGITS}f}"
    return "+" + text[1:] if text[1:] == f"{0:.{DIGITS}f}" else text


def pval(p: float) -> str:
    """'p = 0.012', 'p < 0.001'; a p just below 0.05 that would round to 0.050 reads 'p < 0.05'."""
    if p < 0.001:
        return "p < 0.001"
    text = f"{p:.{DIGITS}f}"
    return "p < 0.05" if rounds_up_to_alpha(p, text) else f"p = {text}"


def interval(
    low: float, high: float, diff: bool = False, estimate: float | None = None, n_cases: float | None = None
) -> str:
    """'95 % CI 0.100 to 0.300'; for a difference (`diff`), signed bounds, and where a bound rounds to
    +0.000 the reader is told whether the interval reaches 0 (`zero_note`). Given the `estimate` it belongs to,
    an interval that does not contain it says so, and why that can happen; one of zero width says what it means. Given `n_cases` below `MIN_CASES`, no
    interval is quoted (the rule of the tables and figures)."""
    if n_cases is not None and too_few(n_cases):
        return f"no 95 % CI with fewer than {MIN_CASES} cases"
    f = signed if diff else num
    text = f"95 % CI {f(low)} to {f(high)}" + (zero_note(low, high) if diff else "")
    if estimate is not None and outside_interval(estimate, low, high):
        text += (
            ", which does not contain the estimate (a percentile bootstrap interval; see the table's note)"
        )
    elif zero_width(low, high):
        text += " (zero width: every case gives the same value, which shows no spread among these cases, not certainty)"
    return text


def zero_note(low: float, high: float) -> str:
    """', i.e. it reaches 0' when a bound prints as +0.000 and the interval touches or contains 0; ', i.e. it
    stops just short of 0 (at -3.0e-04)' when such a bound is not 0 and the interval excludes 0; else ''."""
    near = [b for b in (low, high) if signed(b) == f"+{0:.{DIGITS}f}"]
    if not near:
        return ""
    if direction(low, high) == 0:
        return ", i.e. it reaches 0"
    return f", i.e. it stops just short of 0 (at {near[0]:+.1e})"


def cases(n: int) -> str:
    return f"{int(n):,} case" + ("" if int(n) == 1 else "s")


def queries(n: int) -> str:
    return f"{int(n):,} quer" + ("y" if int(n) == 1 else "ies")


def direction(low: float, high: float, reference: float = 0.0) -> int:
    """+1 if the interval lies above `reference`, -1 if below, 0 if it contains or touches it (within ZERO_TOL)."""
    return 1 if low > reference + ZERO_TOL else -1 if high < reference - ZERO_TOL else 0


def pair_direction(row: Mapping) -> int:
    """Direction of a paired difference: its 95 % CI must exclude 0 and, where the comparisons were adjusted for
    multiplicity, its Holm-adjusted p must be below 0.05 too (so a claimed difference never rests on an unadjusted
    interval beside an adjusted p of 0.05 or more)."""
    return _holm_gate(direction(row["low"], row["high"]), row)


def _holm_gate(d: int, row: Mapping) -> int:
    """`d`, or 0 where the row has a Holm-adjusted p (`p_holm`) of ALPHA or more."""
    p_holm = row.get("p_holm", np.nan) if hasattr(row, "get") else np.nan
    return 0 if d and not pd.isna(p_holm) and p_holm >= ALPHA else d


def too_few(n_cases: float) -> bool:
    return int(n_cases) < MIN_CASES


def _few(n_cases: float) -> str:
    return f"too few cases ({cases(n_cases)}; at least {MIN_CASES} needed) to tell"


def _other_name(name: str) -> str:
    return BASELINE_NAMES.get(name, name)


# the set of tests each Holm adjustment runs over, named in the sentence: one pair can sit in two families
HOLM_FAMILIES = {
    "best": " over the comparisons with the best model",
    "baseline": " over the encoder-baseline pairs",
    "pooled": " over the models' rows for all regions",
    "regions": " over every model's per-region rows with at least 5 cases",
}


def _p_text(row: Mapping, family: str) -> tuple[bool, str]:
    """(Holm-adjusted?, "p = ..." text): the row's `p_holm` where present (saying over which family), else its
    `p_value`; "p ≤ ..." where the p-value is at its bootstrap floor (`cbmir.tables.at_p_floor`)."""
    holm = "p_holm" in row and not pd.isna(row["p_holm"])
    p = row["p_holm"] if holm else row["p_value"]
    text = pval(p)
    if at_p_floor(row["p_value"], row.get("p_min", np.nan))[0]:
        text = f"p ≤ {round_up(p, DIGITS)}"  # an upper bound: rounded up, never down
    return holm, text + (f" (Holm-adjusted{family})" if holm else "")


def _unadjusted_note(row: Mapping, holm: bool) -> str:
    """The clause for a pair judged not distinguishable whose (unadjusted) 95 % CI still excludes 0."""
    if holm and direction(row["low"], row["high"]):
        return " (the unadjusted 95 % CI excludes 0, but the Holm-adjusted p does not reach 0.05)"
    return ""


def comparison_sentence(row: Mapping, other: str = "best", measure: str | None = None) -> str:
    """One paired comparison (a row of `summary.against_best` or `against_baselines`) as a sentence.

    Uses `p_holm` when present (and says so), else `p_value`.
    """
    measure = measure or f"{row['average']} P@{int(row['N'])}"
    model, ref = row["model"], _other_name(str(row[other]))
    holm, p = _p_text(row, HOLM_FAMILIES.get(other, ""))
    tail = f"({interval(row['low'], row['high'], diff=True, estimate=row['difference'], n_cases=row['n_cases'])}; {p}; {cases(row['n_cases'])})"
    d = pair_direction(row)
    if too_few(row["n_cases"]):
        return f"{model} against {ref} in {measure}: difference {signed(row['difference'])} {tail}: {_few(row['n_cases'])}."
    if d == 0:
        why = _unadjusted_note(row, holm)
        return f"{model} is not distinguishable from {ref} in {measure}: difference {signed(row['difference'])} {tail}{why}."
    word = "higher" if d > 0 else "lower"
    return f"{model} scores {word} than {ref} in {measure}: difference {signed(row['difference'])} {tail}."


def chance_sentence(
    name: str, measure: str, estimate: float, low: float, high: float, chance: float, n_cases: int
) -> str:
    """An estimate with its CI against its chance value."""
    verdict = CHANCE_VERDICTS[direction(low, high, chance)]
    if too_few(n_cases):
        verdict = _few(n_cases)
    return (
        f"{name}: {measure} {num(estimate)} ({interval(low, high, estimate=estimate, n_cases=n_cases)}; {cases(n_cases)}) against {num(chance)} "
        f"by chance: {verdict}."
    )


def _band_change(low_a: float, high_a: float, low_b: float, high_b: float) -> int:
    """+1 / -1 where band b lies wholly above / below band a, else 0 (the bands overlap)."""
    return 1 if low_b > high_a else -1 if high_b < low_a else 0


def _change(table: pd.DataFrame, x: str, a, b, value: str, low: str, high: str) -> int:
    ra, rb = table.loc[table[x] == a].iloc[0], table.loc[table[x] == b].iloc[0]
    return _band_change(ra[low], ra[high], rb[low], rb[high])


def _paired_change(changes: pd.DataFrame, a, b) -> pd.Series | None:
    """The row of `changes` (`retrieval.curve_changes` rows of one average) from N = a to N = b, or None."""
    hit = changes[(changes["from_N"] == a) & (changes["to_N"] == b)]
    return None if hit.empty else hit.iloc[0]


def _paired_text(row: pd.Series) -> str:
    """'paired difference +0.120 (95 % CI ...; p = ...)' of one `retrieval.curve_changes` row."""
    _, p = _p_text(row, "")
    return (
        f"paired difference {signed(row['difference'])} "
        f"({interval(row['low'], row['high'], diff=True, estimate=row['difference'])}; {p})"
    )


def shape_sentence(
    table: pd.DataFrame,
    name: str,
    x: str = "N",
    value: str = "micro",
    low: str | None = None,
    high: str | None = None,
    measure: str = "micro P@N",
    middle=None,
    changes: pd.DataFrame | None = None,
) -> str:
    """How a curve (one row per `x`) changes from its first to its last point, and whether it flattens after a
    middle point. With `changes` (`retrieval.curve_changes` rows; those of average `value` are used), judged by
    the paired difference of the same queries between two points (its 95 % CI must exclude 0); else by
    non-overlapping bands (an unpaired, conservative check)."""
    low, high = low or f"{value}_lo", high or f"{value}_hi"
    t = table.sort_values(x)
    xs = t[x].tolist()
    first, last = xs[0], xs[-1]
    r0, r1 = t.iloc[0], t.iloc[-1]
    quote = (
        f"{name}: {measure} goes from {num(r0[value])} ({interval(r0[low], r0[high], estimate=r0[value])}) at {x} = {first} to "
        f"{num(r1[value])} ({interval(r1[low], r1[high], estimate=r1[value])}) at {x} = {last}"
    )
    if "n_cases" in t and too_few(t["n_cases"].min()):
        return f"{quote}: {_few(t['n_cases'].min())} how it changes."
    if middle is None and len(xs) > 2:
        middle = xs[len(xs) // 2]
    paired = None
    if changes is not None and "average" in changes:
        paired = changes[changes["average"] == value]
        if _paired_change(paired, first, last) is None:
            paired = None  # computed for other points: fall back to the bands

    def change(a, b) -> int:
        if paired is None:
            return _change(t, x, a, b, value, low, high)
        row = _paired_change(paired, a, b)
        return 0 if row is None else direction(row["low"], row["high"])

    overall = change(first, last)
    if middle is not None and middle not in (first, last):
        early, late = change(first, middle), change(middle, last)
        if early != 0 and late == 0:
            verb = "rises" if early > 0 else "falls"
            rm = t.loc[t[x] == middle].iloc[0]
            if paired is None:
                why = "(the bands there and at the end overlap; an unpaired check)"
            else:
                why = (
                    f"({_paired_text(_paired_change(paired, first, middle))} up to {x} = {middle}; "
                    f"{_paired_text(_paired_change(paired, middle, last))} after it)"
                )
                return (
                    f"{quote}: it {verb} up to {x} = {middle} ({num(rm[value])}) and is not shown to change after "
                    f"it {why}."
                )
            return f"{quote}: it {verb} up to {x} = {middle} ({num(rm[value])}) and flattens after it {why}."
    if paired is not None:
        text = _paired_text(_paired_change(paired, first, last))
        if overall == 0:
            return f"{quote}: it is not shown to change ({text}, over the same queries)."
        return f"{quote}: it {'rises' if overall > 0 else 'falls'} ({text}, over the same queries)."
    if overall == 0:
        return (
            f"{quote}: it is not shown to change (its 95 % bands at the two ends overlap; an unpaired check)."
        )
    return (
        f"{quote}: it {'rises' if overall > 0 else 'falls'} (the bands at the two ends do not overlap; an unpaired "
        "check)."
    )


def summary_sentences(
    table: pd.DataFrame,
    best: pd.DataFrame | None = None,
    baselines: pd.DataFrame | None = None,
    n: int = 1,
    average: str = "micro",
) -> list[str]:
    """The findings of `summary.model_table` / `against_best` / `against_baselines` at one N and average."""
    part = table[(table["N"] == n) & (table["average"] == average)].sort_values("estimate", ascending=False)
    measure = f"{average} P@{n}"
    out = []
    if "best" in table.attrs:
        n0 = table["N"].min()
        top = table[
            (table["model"] == table.attrs["best"]) & (table["N"] == n0) & (table["average"] == "micro")
        ]
        top = top.iloc[0]
        text = (
            f"Highest micro P@{n0} (the ranking rule): {top['model']}, {num(top['estimate'])} "
            f"({interval(top['low'], top['high'], estimate=top['estimate'], n_cases=top['n_cases'])}; {cases(top['n_cases'])})"
        )
        if same := _tied_with_best(table):
            text += (
                f", and {', '.join(same)} read{'s' if len(same) == 1 else ''} the same {num(top['estimate'])}: "
                "they share rank 1, and it is the reference of the paired comparisons only by its unrounded value "
                "(then macro P@1)"
            )
        if best is not None and len(best):
            vs = best[(best["N"] == n0) & (best["average"] == "micro")]
            tied = sum(pair_direction(r) == 0 or too_few(r["n_cases"]) for _, r in vs.iterrows())
            if len(vs) and tied == len(vs):
                text += (
                    f"; none of the {len(vs)} other models is distinguishable from it in the paired comparisons "
                    "below, so this order does not single it out"
                )
            elif tied:
                text += (
                    f"; {tied} of the {len(vs)} other models {'is' if tied == 1 else 'are'} not distinguishable "
                    "from it in the paired comparisons below"
                )
            elif len(vs):
                who = (
                    "the other model scores" if len(vs) == 1 else f"each of the {len(vs)} other models scores"
                )
                text += f"; {who} lower in the paired comparisons below"
        out.append(text + ".")
    for _, row in part.iterrows():
        out.append(
            chance_sentence(
                row["model"], measure, row["estimate"], row["low"], row["high"], row["chance"], row["n_cases"]
            )
        )
    for frame, other in ((best, "best"), (baselines, "baseline")):
        if frame is not None and len(frame):
            sel = frame[(frame["N"] == n) & (frame["average"] == average)]
            out.extend(comparison_sentence(r, other) for _, r in sel.iterrows())
    return out


def level_sentences(
    levels: pd.DataFrame,
    name: str,
    n: int = 1,
    average: str = "micro",
    contrast: pd.DataFrame | None = None,
) -> list[str]:
    """Anatomy versus pathology (`levels.level_precision` of one model): each level against chance, then, from
    `contrast` (`levels.level_contrast` rows; those of model `name` at N = `n` are used), the paired comparison of
    the region's and the label's chance-corrected P@N (`contrast_sentence`). Without `contrast`, the levels are not
    compared: a label hit is always a region hit, so their unpaired bands cannot be set against each other."""
    part = levels[levels["N"] == n].set_index("level")
    lo, hi = f"{average}_lo", f"{average}_hi"
    out = [
        chance_sentence(
            name,
            f"{average} P@{n} ({level} level)",
            r[average],
            r[lo],
            r[hi],
            r[f"chance_{average}"],
            r["n_cases"],
        )
        for level, r in part.iterrows()
    ]
    if contrast is not None:
        rows = contrast[(contrast["model"] == name) & (contrast["N"] == n)]
        out += [contrast_sentence(r) for _, r in rows.iterrows()]
    return out


LEVEL_WORDS = {
    "label": "full label (finding)"
}  # what a hit at each level retrieves, where it differs from the level's name


def contrast_sentence(row: Mapping, coarse: str = "region", fine: str = "label") -> str:
    """One row of `levels.level_contrast`: micro P@N against chance at the `coarse` and the `fine` level, its
    chance-corrected value (P - chance) / (1 - chance) at each, and the paired difference of the two corrected
    values, judged like `comparison_sentence` (CI and Holm-adjusted p)."""
    holm, p = _p_text(row, " over the models")
    head = (
        f"{row['model']}: micro P@{int(row['N'])} is {num(row[coarse])} against {num(row[f'{coarse} chance'])} by "
        f"chance at the {coarse} level and {num(row[fine])} against {num(row[f'{fine} chance'])} at the {fine} "
        f"level; chance-corrected (the mean over queries of each query's (P - chance) / (1 - chance), 1 = perfect, "
        "0 = chance) "
        f"{num(row[f'{coarse} corrected'])} and {num(row[f'{fine} corrected'])}; paired difference "
        f"{signed(row['difference'])} "
        f"({interval(row['low'], row['high'], diff=True, estimate=row['difference'], n_cases=row['n_cases'])}; {p}; {queries(row['n_queries'])}, "
        f"{cases(row['n_cases'])})"
    )
    if too_few(row["n_cases"]):
        return f"{head}: {_few(row['n_cases'])}."
    d = pair_direction(row)
    big, small = LEVEL_WORDS.get(coarse, coarse), LEVEL_WORDS.get(fine, fine)
    if d:
        first, second = (big, small) if d > 0 else (small, big)
        return f"{head}: the {first} is retrieved closer to perfect, relative to chance, than the {second}."
    return f"{head}: their chance-corrected values are not distinguishable{_unadjusted_note(row, holm)}."


def conditional_sentence(row: Mapping, name: str) -> str:
    """One row of `levels.pathology_given_anatomy(_models)`: the finding among anatomy-correct neighbours vs chance,
    with the Holm-adjusted p of its family (`levels.holm_over_rows`) where the row was tested."""
    verdict = conditional_verdict(row)
    if verdict == "too few cases":
        verdict = _few(row["n_cases"])
    elif verdict == CHANCE_VERDICTS[0] and direction(row["difference_lo"], row["difference_hi"]):
        verdict += " (the unadjusted 95 % CI excludes 0, but the Holm-adjusted p does not reach 0.05)"
    where = f" in {row['region']}" if "region" in row and row["region"] else ""
    pooled = not where or row["region"] == ALL_REGIONS
    p = ""
    if "p_holm" in row and not pd.isna(row["p_holm"]):
        p = "; " + _p_text(row, HOLM_FAMILIES["pooled" if pooled else "regions"])[1]
    return (
        f"{name}{where}: among anatomy-correct neighbours in the first {int(row['N'])}, the finding matches in "
        f"{num(row['share'])} against {num(row['chance'])} by chance, difference {signed(row['difference'])} "
        f"({interval(row['difference_lo'], row['difference_hi'], diff=True, estimate=row['difference'], n_cases=row['n_cases'])}{p}; "
        f"{queries(row['n_queries'])}, {cases(row['n_cases'])}): {verdict}."
    )


def conditional_verdict(row: Mapping) -> str:
    """'above chance', 'below chance', 'not distinguishable from chance' or 'too few cases' for one row of
    `levels.pathology_given_anatomy(_models)`: a direction needs the 95 % CI to exclude 0 and, where the row has
    a Holm-adjusted p (`p_holm`), that p to be below 0.05."""
    if too_few(row["n_cases"]):
        return "too few cases"
    return CHANCE_VERDICTS[_holm_gate(direction(row["difference_lo"], row["difference_hi"]), row)]


def conditional_sentences(part: pd.DataFrame, region_limit: int = 3) -> list[str]:
    """Sentences for the rows of `levels.pathology_given_anatomy_models` at one N: each model's pooled row
    ("all regions") in full; its per-region rows in full when there are at most `region_limit`, otherwise one
    sentence per model that counts the regions by verdict and quotes the smallest difference (among regions with
    enough cases), so that 15 regions x 9 models do not become 135 sentences that repeat the table. Where a
    baseline's pooled row is above chance, a last sentence says so (the labels, not the model, may explain it)."""
    out = []
    floor = [
        f"{_other_name(str(r['model']))} ({signed(r['difference'])})"
        for _, r in part[
            (part["region"] == ALL_REGIONS) & part["model"].isin(list(BASELINE_NAMES))
        ].iterrows()
        if conditional_verdict(r) == CHANCE_VERDICTS[1]
    ]
    for model, rows in part.groupby("model", sort=False):
        pooled = rows[rows["region"] == ALL_REGIONS]
        regions = rows[rows["region"] != ALL_REGIONS]
        out += [conditional_sentence(r, model) for _, r in pooled.iterrows()]
        if len(regions) <= region_limit:
            out += [conditional_sentence(r, model) for _, r in regions.iterrows()]
            continue
        verdicts = [conditional_verdict(r) for _, r in regions.iterrows()]
        counts = ", ".join(
            f"{verdict} in {verdicts.count(verdict)}"
            for verdict in (*CHANCE_VERDICTS.values(), "too few cases")
            if verdict in verdicts
        )
        text = (
            f"{model}, region by region among anatomy-correct neighbours in the first {int(regions['N'].iloc[0])} "
            f"({len(regions)} regions; each with its interval and Holm-adjusted p in the table above): the finding matches {counts}"
        )
        enough = regions[[v != "too few cases" for v in verdicts]]
        if not enough.empty:
            r = enough.loc[enough["difference"].idxmin()]
            text += (
                f"; the smallest difference is in {r['region']}: {num(r['share'])} against {num(r['chance'])} by "
                f"chance, {signed(r['difference'])} ({interval(r['difference_lo'], r['difference_hi'], diff=True, estimate=r['difference'])}; "
                f"{queries(r['n_queries'])}, {cases(r['n_cases'])})"
            )
        out.append(text + ".")
    if floor:
        out.append(
            f"Over all regions, {' and '.join(floor)} {'is' if len(floor) == 1 else 'are'} above chance too: a share "
            "above chance need not mean that a model recognises the finding; it can follow from how the labels are "
            "built (a finding that comes from one source, or images of the same patients; see the data card)."
        )
    return out


def _and_list(items: Sequence) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def conditional_scope_sentence(
    part: pd.DataFrame, regions: Sequence[str], left_out: pd.DataFrame | None = None
) -> str:
    """Which of the queried `regions` with at least two labels the pooled rows of `part` (one N of
    `levels.pathology_given_anatomy_models(..., by_region=True)`) hold, and why the others have no row at that N:
    `left_out` (`levels.uninformative_pairs`) names the regions whose index images N reaches; any other has no
    query with an anatomy-correct neighbour for every model."""
    n = int(part["N"].iloc[0])
    held = [r for r in regions if r in set(part["region"])]
    gone = [r for r in regions if r not in held]
    text = f'At N = {n}, "all regions" pools the queries of {_and_list(held) if held else "no region"}'
    if not gone:
        return text + "."
    reached = set()
    if left_out is not None and not left_out.empty:
        for _, r in left_out.iterrows():
            if str(n) in str(r["N left out"]).replace(" ", "").split(","):
                reached.add(str(r["region"]))
    why = [
        f"{_and_list(sorted(reached & set(gone)))} (N reaches its index images; see the table of left-out regions)"
        if reached & set(gone)
        else "",
        f"{_and_list(sorted(set(gone) - reached))} (no query with an anatomy-correct neighbour for every model)"
        if set(gone) - reached
        else "",
    ]
    return (
        f"{text}; left out at this N: {'; '.join(w for w in why if w)}. The pooled row at this N covers only the "
        "regions it names."
    )


def conditional_across_n(cond: pd.DataFrame) -> list[str]:
    """One sentence per model: the verdict of its pooled row ("all regions") at each N of `cond`
    (`levels.pathology_given_anatomy_models` rows; each N its own common queries and Holm families), so that the
    reader sees whether the verdict at the N described depends on that choice."""
    pooled = cond[cond["region"] == ALL_REGIONS] if "region" in cond else cond
    out = []
    for model, rows in pooled.groupby("model", sort=False):
        by_verdict: dict[str, list[str]] = {}
        for _, r in rows.sort_values("N").iterrows():
            by_verdict.setdefault(conditional_verdict(r), []).append(
                f"{int(r['N'])} ({queries(r['n_queries'])}, {cases(r['n_cases'])})"
            )
        if len(by_verdict) == 1:
            ((verdict, ns),) = by_verdict.items()
            out.append(f"{model}, all regions: {verdict} at every N shown (N = {_and_list(ns)}).")
            continue
        parts = "; ".join(f"{verdict} at N = {_and_list(ns)}" for verdict, ns in by_verdict.items())
        out.append(
            f"{model}, all regions: {parts}: the verdict changes with N, and so do the queries and regions it rests "
            "on (fewer queries have an anatomy-correct neighbour for every model at small N)."
        )
    return out


def _index_count(x: float) -> str:
    """'23 index cases'; a count that differs between repeats is a mean: '23.4 index cases (mean over repeats)'."""
    return f"{int(x):,} index cases" if float(x).is_integer() else f"{x:,.1f} index cases (mean over repeats)"


def _has_room(part: pd.DataFrame) -> bool:
    """Whether every row of an index-size curve has a ceiling above its chance value."""
    return "ceiling" in part and bool((part["ceiling"] - part["chance"] > ZERO_TOL).all())


def _judged(r: pd.Series, room: bool) -> tuple[float, float, float]:
    """(estimate, low, high) of an index-size row on the scale its change is judged on: the share of the room
    between chance and the ceiling, (P - chance) / (ceiling - chance), where `room`; else the excess P - chance."""
    from cbmir.analyses.index_size import room_share

    values = [r[c] for c in ("estimate", "low", "high")]
    if room:
        return tuple(float(room_share(v, r["chance"], r["ceiling"])) for v in values)  # type: ignore[return-value]
    return tuple(v - r["chance"] for v in values)  # type: ignore[return-value]


def index_size_change(part: pd.DataFrame) -> tuple[pd.Series, pd.Series, int]:
    """(smallest-index row, full-index row, change) of one model's curve (`index_size.index_size_study` rows of one
    metric, N and average). change: +1 / -1 where the 95 % bands at the two ends do not overlap, else 0, judged on
    the share of the room between chance and the ceiling, (P - chance) / (ceiling - chance) (bounds mapped the
    same way): chance and the highest reachable value both change with the index (n_c shrinks in a subsample), so
    neither the raw values nor their excess over chance are compared. Without a `ceiling` column, the excess over
    chance. `index_size_sentence` and the claim verdict both use this rule."""
    t = part.sort_values("index_cases")
    if t["index_cases"].nunique() < 2:
        raise ValueError("an index-size curve needs at least two index sizes")
    r0, r1 = t.iloc[0], t.iloc[-1]
    room = _has_room(t.iloc[[0, -1]])
    (_, lo0, hi0), (_, lo1, hi1) = _judged(r0, room), _judged(r1, room)
    return r0, r1, _band_change(lo0, hi0, lo1, hi1)


METRIC_MEANINGS = {
    "plain P@N": "hits among the first {n} / {n}",
    "hit@N": "the share of queries with at least one image of their label among the first {n}",
}


def _index_size_at(r: pd.Series, full: pd.Series | None = None) -> str:
    """'23 index cases (77 images, 63 % of the full index's)': the share only for the smaller end."""
    text = _index_count(r["index_cases"])
    if "index_images" in r and not pd.isna(r["index_images"]):
        share = (
            f", {100 * r['index_images'] / full['index_images']:.0f} % of the full index's"
            if full is not None
            else ""
        )
        text += f" ({r['index_images']:,.0f} images{share})"
    return text


def index_size_sentence(
    table: pd.DataFrame, name: str, metric: str = "plain P@N", n: int = 10, average: str = "micro"
) -> str:
    """How `metric` at `n` changes from the smallest to the full index (`index_size.index_size_study` of one model),
    the index size counted in cases (the unit subsampled) and images: the values with their chance and their
    ceiling, and the share of the room between them that is judged (`index_size_change`)."""
    part = table[(table["metric"] == metric) & (table["N"] == n) & (table["average"] == average)]
    if part.empty:
        raise ValueError(f"no rows for metric {metric!r}, N = {n}, average {average!r}")
    r0, r1, change = index_size_change(part)
    room = _has_room(part.sort_values("index_cases").iloc[[0, -1]])
    measure = f"{average} {metric.replace('@N', f'@{n}')}"
    meaning = METRIC_MEANINGS.get(metric, "").format(n=n)
    queries = ""
    if "n_cases" in part:
        lo, hi = int(part["n_cases"].min()), int(part["n_cases"].max())
        queries = (
            f", over {lo:,} test-query cases," if lo == hi else f", over {lo:,} to {hi:,} test-query cases,"
        )
    text = (
        f"{name}: {measure}{f' ({meaning})' if meaning else ''}{queries} goes from {num(r0['estimate'])} "
        f"({interval(r0['low'], r0['high'], estimate=r0['estimate'])}) against {num(r0['chance'])} by chance at "
        f"{_index_size_at(r0, r1)} to {num(r1['estimate'])} ({interval(r1['low'], r1['high'], estimate=r1['estimate'])}) "
        f"against {num(r1['chance'])} by chance at {_index_size_at(r1)}"
    )
    (x0, lo0, hi0), (x1, lo1, hi1) = _judged(r0, room), _judged(r1, room)
    if room:
        reach = (
            f"min(n_c, {n}) / {n}" if metric == "plain P@N" else "1 where its class is in the index, else 0"
        )
        what = "that share"
        text += (
            f". The highest value it can reach (per query {reach}, averaged) is {num(r0['ceiling'])} at the smallest "
            f"and {num(r1['ceiling'])} at the full index; as a share of the room between chance and that ceiling, "
            f"(P - chance) / (ceiling - chance), it goes from {num(x0)} ({interval(lo0, hi0)}) to {num(x1)} "
            f"({interval(lo1, hi1)})"
        )
    else:
        what = "the excess"
        text += (
            f"; its excess over chance goes from {signed(x0)} ({interval(lo0, hi0, diff=True)}) to {signed(x1)} "
            f"({interval(lo1, hi1, diff=True)})"
        )
    if "n_cases" in part and too_few(part["n_cases"].min()):
        return text + f": {_few(part['n_cases'].min())} how it changes."
    if change:
        return text + (
            f": it {'rises' if change > 0 else 'falls'} (the bands of {what} at the two ends do not overlap; "
            "an unpaired check)."
        )
    return (
        text
        + f": it is not shown to change (the bands of {what} at the two ends overlap; an unpaired check)."
    )


# ---- which of the paper's claims this configuration can test ---------------------------------------------------
PAPER_CLAIMS = (
    (
        "image_text",
        "An image-text (weakly supervised) model, BiomedCLIP, retrieves best among the tested encoders.",
    ),
    (
        "baselines",
        "Pretrained encoders (foundation models and supervised networks alike) retrieve above a floor (here: raw "
        "pixels, a random ViT).",
    ),
    (
        "anatomy",
        "Anatomy is retrieved more reliably than pathology (the paper: far more; the direction is tested).",
    ),
    ("index_size", "Retrieval quality depends on the size of the index."),
    (
        "numbers",
        "BiomedCLIP reaches micro P@1 0.594, P@3 0.590, P@5 0.588, P@10 0.583 on the paper's 4 datasets.",
    ),
)


def paper_claims(
    models: Sequence[str],
    config_name: str,
    baselines: Sequence[str] = ("raw-pixels", "random-vit"),
    regions_with_several_labels: int = 0,
    index_size_ran: bool = False,
    image_text_models: Sequence[str] = IMAGE_TEXT_MODELS,
    paper_setup: bool = False,
) -> pd.DataFrame:
    """Each of the paper's claims, whether this configuration can test it, and why (`paper_setup`: the config holds
    the paper's data and splits, so the article's printed numbers can be tested). Columns: claim, testable, why."""
    models = list(models)
    text = [m for m in models if m in image_text_models]
    base = [m for m in models if m in baselines]
    encoders = [m for m in models if m not in baselines]
    why = {
        "image_text": (
            bool(text) and len(encoders) > 1,
            f"image-text models run: {', '.join(text)}"
            if text
            else "no image-text model in this run (none ships offline)",
        ),
        "baselines": (
            bool(base) and bool(encoders),
            f"baselines {', '.join(base)} and {len(encoders)} encoder(s) ran"
            if base and encoders
            else "needs a baseline and an encoder",
        ),
        "anatomy": (
            regions_with_several_labels > 0,
            f"{regions_with_several_labels} region(s) with at least two labels"
            if regions_with_several_labels
            else "no region has two labels to tell apart",
        ),
        "index_size": (
            index_size_ran,
            "the index-size study ran" if index_size_ran else "the index-size study did not run",
        ),
        "numbers": (
            paper_setup and "biomedclip" in models,
            "same data and model"
            if paper_setup and "biomedclip" in models
            else "biomedclip did not run"
            if paper_setup
            else f"config {config_name!r} does not hold the paper's data and splits (paper_setup: false): the "
            "article's numbers are not comparable",
        ),
    }
    return pd.DataFrame(
        [{"claim": claim, "testable": why[key][0], "why": why[key][1]} for key, claim in PAPER_CLAIMS]
    )


P_FLOOR_SENTENCE = (
    "p ≤ x: every resampled difference had the same sign, so x is the smallest p-value the bootstrap's B resamples "
    "can give, 2 / (B + 1) (scaled by Holm's factor where Holm-adjusted); the true p-value may be smaller."
)


def as_markdown(sentences: Sequence[str]) -> str:
    """Sentences as a markdown bullet list (for `display(Markdown(...))` in a notebook); where one quotes a
    p-value at the bootstrap's floor ("p ≤"), a line below the list says what that means."""
    text = "\n".join(f"- {s}" for s in sentences)
    return text + (f"\n\n{P_FLOOR_SENTENCE}" if any("p ≤" in s for s in sentences) else "")


# ---- what the tables say about each testable claim ---------------------------------------------------------------
HOLDS, FAILS, PARTLY, NOT_SHOWN, UNTESTABLE = (
    "holds",
    "does not hold",
    "holds in part",
    "not shown",
    "cannot be tested here",
)


def _count_verdict(passed: int, failed: int, total: int) -> str:
    """All pass: holds; none passes and some fail: does not hold; some pass: in part; else not shown."""
    if total and passed == total:
        return HOLDS
    if passed:
        return PARTLY
    return FAILS if failed else NOT_SHOWN


def _pairs_at(frame: pd.DataFrame | None, n: int, average: str) -> pd.DataFrame:
    if frame is None or frame.empty:
        return pd.DataFrame()
    return frame[(frame["N"] == n) & (frame["average"] == average)]


def _baseline_verdict(base: pd.DataFrame, measure: str) -> tuple[str, str]:
    if base.empty:
        return NOT_SHOWN, "no encoder-baseline comparison"
    if too_few(base["n_cases"].min()):
        return NOT_SHOWN, _few(base["n_cases"].min())
    signs = np.array([pair_direction(r) for _, r in base.iterrows()])
    above, below = int((signs > 0).sum()), int((signs < 0).sum())
    evidence = (
        f"in {measure} (the findings' measure; the tables show other N and averages): {above} of {len(base)} encoder-baseline pairs score higher (95 % CI of the paired "
        "difference above 0 and "
        "Holm-adjusted p < 0.05), "
        f"{below} lower, {len(base) - above - below} not distinguishable"
    )
    if "baseline" in base:
        per = [
            f"against {_other_name(str(ref))} {int((signs[mask] > 0).sum())} of {int(mask.sum())}"
            for ref in dict.fromkeys(base["baseline"])
            for mask in [(base["baseline"] == ref).to_numpy()]
        ]
        evidence += (
            f" (higher: {', '.join(per)}); the claim holds when every pair is higher, in part when some are"
        )
    return _count_verdict(above, below, len(base)), evidence


def _higher_elsewhere(pairs: pd.DataFrame | None, n: int, average: str) -> str:
    """'; at the other N and averages of the tables (not counted in the verdict): micro P@3 4 of 6 higher, ...',
    by the rule of the verdict (`pair_direction`), for the rows of `pairs` other than (`n`, `average`)."""
    if pairs is None or pairs.empty or too_few(pairs["n_cases"].min()):
        return ""
    bits = [
        f"{avg} P@{int(big_n)} {sum(pair_direction(r) > 0 for _, r in g.iterrows())} of {len(g)}"
        for (avg, big_n), g in pairs.groupby(["average", "N"], sort=True)
        if (avg, big_n) != (average, n)
    ]
    if not bits:
        return ""
    return f"; at the other N and averages of the tables, pairs higher (not counted in the verdict): {', '.join(bits)}"


def _best_verdict(
    best_model: str, best: pd.DataFrame, image_text: Sequence[str], tied: Sequence[str] = ()
) -> tuple[str, str]:
    """The image-text claim from the paired comparisons with the model of the highest point estimate (`best`:
    `summary.against_best` rows at one N and average); `tied`: the other models whose value reads the same."""
    if best.empty or too_few(best["n_cases"].min()):
        return NOT_SHOWN, "no comparison with the best model" if best.empty else _few(best["n_cases"].min())
    kind = "an image-text model" if best_model in image_text else "not an image-text model"
    lead = f"in micro P@1 the reference (highest) model is {best_model} ({kind})"
    if tied:
        lead += f", sharing rank 1 with {', '.join(tied)} (equal to {DIGITS} decimals)"
    own = best[best["model"] == "biomedclip"]
    if len(own):
        r = own.iloc[0]
        lead += (
            f"; biomedclip against it: {signed(r['difference'])} ({interval(r['low'], r['high'], diff=True)}; "
            f"{_p_text(r, HOLM_FAMILIES['best'])[1]})"
        )
    if best_model in image_text:
        below = sum(pair_direction(r) < 0 for _, r in best.iterrows())
        evidence = (
            f"{lead}; {below} of {len(best)} other models score lower (95 % CI of the paired difference below 0 "
            "and Holm-adjusted p < 0.05)"
        )
        return (HOLDS if below == len(best) else PARTLY if below else NOT_SHOWN), evidence
    rivals = best[best["model"].isin(image_text)]
    below = sum(pair_direction(r) < 0 for _, r in rivals.iterrows())
    evidence = (
        f"{lead}; {below} of {len(rivals)} image-text models score lower than it (95 % CI of the paired "
        "difference below 0 and Holm-adjusted p < 0.05); the claim fails only when all do"
    )
    return (FAILS if len(rivals) and below == len(rivals) else NOT_SHOWN), evidence


def _anatomy_verdict(contrast: pd.DataFrame, n: int) -> tuple[str, str]:
    """From `levels.level_contrast` rows (micro) at N = `n`: the same rule and numbers as `contrast_sentence`."""
    if "difference" not in contrast or "region corrected" not in contrast:
        raise ValueError(
            "parameter 'levels' must hold levels.level_contrast rows (columns 'region corrected', 'difference', ...); "
            f"got columns {list(contrast.columns)}"
        )
    part = contrast[contrast["N"] == n]
    if part.empty:
        return NOT_SHOWN, f"no region-label contrast at N = {n}"
    if too_few(part["n_cases"].min()):
        return NOT_SHOWN, _few(part["n_cases"].min())
    signs = {str(r["model"]): pair_direction(r) for _, r in part.iterrows()}
    higher = [m for m, d in signs.items() if d > 0]
    lower = [m for m, d in signs.items() if d < 0]

    def listed(models: list[str]) -> str:
        return f" ({', '.join(models)})" if models else ""

    evidence = (
        f"micro P@{n} chance-corrected ((P - chance) / (1 - chance) per query), region level minus label level, "
        "paired over the same queries (a label hit is always a region hit and region-level chance is higher, so "
        "neither the raw shares nor their plain excesses over chance, whose ceilings differ, are compared; cluster "
        "bootstrap over cases, 95 % CI and Holm-adjusted p < 0.05 over the models): higher at "
        f"the region level for {len(higher)} of {len(signs)} models{listed(higher)}, lower for {len(lower)}"
        f"{listed(lower)}; paired differences {signed(part['difference'].min())} to {signed(part['difference'].max())} "
        "(notebook 6); the sign of the gap is tested, not its size ('far')"
    )
    floors = [m for m in higher if m in BASELINE_NAMES]
    if floors:
        evidence += (
            f"; the baselines show it too ({', '.join(floors)}), so the gap reflects how this benchmark's labels "
            "are built (a region often follows from the modality or the source), at least in part, rather than what the "
            "encoders learned"
        )
    return _count_verdict(len(higher), len(lower), len(signs)), evidence


def _numbers_verdict(table: pd.DataFrame, model: str = "biomedclip") -> tuple[str, str]:
    from cbmir.analyses.summary import PAPER_REPORTED

    ours = table[(table["model"] == model) & (table["average"] == "micro")].set_index("N")
    paper = PAPER_REPORTED[PAPER_REPORTED["model"] == model].set_index("N")["value"]
    inside = [
        n for n in paper.index if n in ours.index and ours.loc[n, "low"] <= paper[n] <= ours.loc[n, "high"]
    ]
    tested = [n for n in paper.index if n in ours.index]
    evidence = f"the published value lies inside our 95 % CI at {len(inside)} of {len(tested)} N"
    return _count_verdict(len(inside), len(tested) - len(inside), len(tested)), evidence


def _index_size_part(study: pd.DataFrame, n: int, metric: str, average: str) -> pd.DataFrame:
    return study[(study["metric"] == metric) & (study["N"] == n) & (study["average"] == average)]


def _index_size_changes(
    part: pd.DataFrame,
) -> tuple[list[str], int, list[tuple[float, float, float]]]:
    """(models whose curve changes by `index_size_change`, models with at least two index sizes, and for each
    model (its smallest index's share of the full index's images, the smallest and the full index's cases)) for
    the rows `part` of one metric, N and average."""
    total = 0
    which: list[str] = []
    shares: list[tuple[float, float, float]] = []
    for model, g in part.groupby("model", sort=False):
        if g["index_cases"].nunique() < 2:
            continue
        total += 1
        r0, r1, change = index_size_change(g)  # the rule of notebook 4's sentences, on the same rows
        if "index_images" in g:
            shares.append(
                (r0["index_images"] / r1["index_images"], float(r0["index_cases"]), float(r1["index_cases"]))
            )
        if change:
            which.append(str(model))
    return which, total, shares


def _index_size_verdict(study: pd.DataFrame, n: int, metric: str, average: str) -> tuple[str, str]:
    """The verdict rests on `metric`; hit@N, where the table has it, is reported beside it (not counted)."""
    part = _index_size_part(study, n, metric, average)
    if part.empty:
        return NOT_SHOWN, f"no {metric} rows at N = {n} in the index-size table"
    if too_few(part["n_cases"].min()):
        return NOT_SHOWN, _few(part["n_cases"].min())
    which, total, shares = _index_size_changes(part)
    measure = f"{average} {metric.replace('@N', f'@{n}')}"
    evidence = (
        f"{measure} as a share of the room between its chance value and the highest value it can reach, "
        "(P - chance) / (ceiling - chance) (both change with the index), differs between the smallest and the "
        f"full index beyond the 95 % bands (unpaired, unadjusted across models) for {len(which)} of {total} models"
        f"{' (' + ', '.join(which) + ')' if which else ''}"
    )
    other = "hit@N"
    if metric != other and ((study["metric"] == other) & (study["N"] == n)).any():
        hits, hit_total, _ = _index_size_changes(_index_size_part(study, n, other, average))
        evidence += (
            f"; by {average} hit@{n}, shown beside it and not counted in the verdict, for {len(hits)} of {hit_total}"
            f"{' (' + ', '.join(hits) + ')' if hits else ''}"
        )
    narrow = bool(shares) and min(shares)[0] > NARROW_INDEX_RANGE and not which
    if shares:
        share, small, full = min(shares)
        evidence += (
            f"; the smallest index holds {_index_count(small)} of {full:,.0f} and {100 * share:.0f} % of the full "
            "index's images"
        )
        if narrow:
            evidence += (
                " (fewer cases, but not half the images: every class keeps a case, and the large classes keep most "
                "of their images; a range this narrow, with bands this wide, cannot show a dependence, so this "
                "run cannot test the claim)"
            )
    evidence += " (notebook 4)"
    return (UNTESTABLE if narrow else _count_verdict(len(which), 0, total)), evidence


def claim_verdicts(
    claims: pd.DataFrame,
    table: pd.DataFrame,
    best: pd.DataFrame | None = None,
    baselines: pd.DataFrame | None = None,
    levels: pd.DataFrame | None = None,
    index_size: pd.DataFrame | None = None,
    n: int = 1,
    average: str = "micro",
    image_text_models: Sequence[str] = IMAGE_TEXT_MODELS,
) -> pd.DataFrame:
    """`paper_claims` with what this run's tables say: verdict (holds, does not hold, holds in part, not shown,
    cannot be tested here) and the evidence, judged at `average` P@`n`.

    `table`: `summary.model_table`; `best` / `baselines`: `summary.against_best` / `against_baselines`; `levels`:
    `levels.level_contrast` rows of every model (judged on micro P@`n` whatever `average`: the paired difference of
    the region's and the label's chance-corrected P@N, as in notebook 6); `index_size`:
    `index_size.index_size_study` rows with a `model` column (judged on micro plain P@10 by `index_size_change`: it
    holds for a model whose bands of its share of the room between chance and the ceiling at the smallest and the
    full index do not overlap; "cannot be tested here" where no curve changes and the smallest index still holds
    more than `NARROW_INDEX_RANGE` of the full index's images). A claim whose table is missing is "not shown".
    """
    out = []
    for _, row in claims.iterrows():
        key = dict((claim, k) for k, claim in PAPER_CLAIMS).get(row["claim"])
        if not row["testable"]:
            verdict, evidence = UNTESTABLE, row["why"]
        elif key == "baselines":
            verdict, evidence = _baseline_verdict(_pairs_at(baselines, n, average), f"{average} P@{n}")
            evidence += _higher_elsewhere(baselines, n, average)
        elif key == "image_text":
            verdict, evidence = _best_verdict(
                str(table.attrs.get("best", "")), _pairs_at(best, n, average), image_text_models,
                _tied_with_best(table),
            )  # fmt: skip
        elif key == "anatomy" and levels is not None:
            verdict, evidence = _anatomy_verdict(levels, n)
        elif key == "numbers":
            verdict, evidence = _numbers_verdict(table)
        elif key == "index_size" and index_size is not None:
            verdict, evidence = _index_size_verdict(index_size, 10, "plain P@N", "micro")
        else:
            verdict, evidence = NOT_SHOWN, "its table was not given"
        out.append(
            {
                "claim": row["claim"],
                "testable": bool(row["testable"]) and verdict != UNTESTABLE,  # e.g. an index range too narrow
                "verdict": verdict,
                "evidence": evidence,
            }
        )
    return pd.DataFrame(out, columns=["claim", "testable", "verdict", "evidence"])


TERMS = (
    "*Terms.* **P@N** is the paper's modified precision: the share of a query's first N neighbours (N capped at the "
    "number of index images of its class) that carry its label; **micro** averages over queries, **macro** over "
    "classes. A **case** is an independent unit (a patient where the source records one): every interval is a 95 % "
    "cluster bootstrap over cases. **Chance** is the value under a random ranking of the index. A difference is "
    "called higher or lower only when its paired 95 % interval excludes 0 and its Holm-adjusted p is below 0.05. A "
    "value is called above or below chance when its 95 % interval excludes the chance value (not adjusted across "
    "models). A pair can sit in two families (against the best model, against a baseline), each with its own Holm "
    "adjustment, so its adjusted p can differ between them. In the notebooks, a curve rises or falls, and the best "
    "classifier ranks above the runner-up, only where a paired 95 % interval excludes 0 (one comparison each, not "
    "adjusted)."
)


def findings_markdown(
    config_name: str,
    table: pd.DataFrame,
    best: pd.DataFrame | None,
    baselines: pd.DataFrame | None,
    verdicts: pd.DataFrame,
    n: int = 1,
    average: str = "micro",
    method: Sequence[str] = (),
) -> str:
    """The report's findings: the sentences of `summary_sentences`, then the paper's claims grouped by verdict;
    `method`: statements of method shown after the terms (e.g. `embeddings.precision_sentence`)."""
    lines = [f"# Findings ({config_name})", "", TERMS, ""]
    if method:
        lines += [*method, ""]
    lines += [f"## What the tables show ({average} P@{n})", ""]
    lines.append(as_markdown(summary_sentences(table, best, baselines, n=n, average=average)))
    lines += ["", "## The paper's claims", ""]
    for verdict in (HOLDS, PARTLY, FAILS, NOT_SHOWN, UNTESTABLE):
        part = verdicts[verdicts["verdict"] == verdict]
        if part.empty:
            continue
        lines += [f"**{verdict.capitalize()}:**", ""]
        lines.append(as_markdown([f"{r['claim']} ({r['evidence']})" for _, r in part.iterrows()]))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---- data, embeddings, embedding space, classification (notebooks 01, 02, 05, 07) -------------------------------
def data_sentences(
    by_label: pd.DataFrame, audit_summary: pd.DataFrame, test_cases: int, min_cases: int = MIN_CASES
) -> list[str]:
    """The data notebook's findings from `data.cases_per_split(m, "label")`, a `leakage_audit(...).summary` and
    the number of distinct test cases: which test classes have fewer than `min_cases` test cases (their
    per-class numbers cannot be bounded), classes never queried, and each leakage check's count."""
    test = by_label[by_label["test images"] > 0]
    thin = test[test["test cases"] < min_cases].sort_values(["test cases", "label"])
    text = (
        f"The test split holds {int(test['test images'].sum()):,} images of {len(test)} classes from "
        f"{cases(test_cases)}; {len(thin)} of the {len(test)} test classes have fewer than {min_cases} test cases"
    )
    if 0 < len(thin) <= LIST_LIMIT:
        listed = ", ".join(
            f"{lab} ({cases(n)})" for lab, n in zip(thin["label"], thin["test cases"], strict=True)
        )
        text += f": {listed}"
    elif len(thin):
        per = thin["test cases"].astype(int).value_counts().sort_index()
        text += (
            ": " + ", ".join(f"{k} with {cases(n)}" for n, k in per.items()) + " (the table above lists them)"
        )
    if len(thin):
        text += ". Per-class figures of these classes rest on too few cases to be bounded"
    out = [text + "."]
    missing = by_label[by_label["test images"] == 0]["label"].astype(str).tolist()
    if missing:
        out.append(
            f"{len(missing)} class(es) have no test image and are never queried: {', '.join(missing)}."
        )
    for _, row in audit_summary.iterrows():
        n = int(row["count"])
        where = "" if row["split pair"] == "any" else f" ({row['split pair']})"
        out.append(f"Leakage check, {row['check']}{where}: {n} found" + (" (listed below)." if n else "."))
    return out


def separation_sentence(table: pd.DataFrame, name: str) -> str:
    """`embeddings.cosine_separation` of one model: same- against different-label similarity across cases."""
    t = table.set_index("pair")
    same, diff, d = t.loc["same label"], t.loc["different label"], t.loc["difference"]
    n = int(d["cases"])
    head = (
        f"{name}: an image's mean cosine similarity to same-label images of other cases is {num(same['mean'])}, "
        f"to different-label images of other cases {num(diff['mean'])}; difference {signed(d['mean'])} "
        f"({interval(d['ci_low'], d['ci_high'], diff=True, estimate=d['mean'], n_cases=n)}; {int(d['images']):,} images, {cases(n)})"
    )
    if "label-blind" in t:  # what an embedding blind to the label gives
        head += (
            f", against 0 for an embedding blind to the label (whose same- and different-label means would both be "
            f"the mean similarity to any image of another case, {num(same['label-blind'])})"
        )
    if too_few(n):
        return f"{head}: {_few(n)}."
    verdict = {
        1: "on average, same-label images of other cases are closer than different-label ones",
        -1: "on average, different-label images of other cases are closer than same-label ones",
        0: "same- and different-label similarities are not distinguishable",
    }[direction(d["ci_low"], d["ci_high"])]
    return f"{head}: {verdict}."


LEVEL_ORDER = ("modality", "region", "label")


def purity_sentences(table: pd.DataFrame) -> list[str]:
    """`embedding_space.embedding_space_table` rows of several models (a `model` column): per model, purity against
    chance at each level (levels are not compared with each other: label purity can never exceed modality purity); silhouette quoted
    with the level where it is highest (it is not compared with purity)."""
    out = []
    for model, part in table.groupby("model", sort=False):
        p = part.set_index("level").reindex([lv for lv in LEVEL_ORDER if lv in set(part["level"])])
        bits = []
        for level, r in p.iterrows():
            d = direction(r["ci_low"], r["ci_high"], r["chance"])
            verdict = (
                "above chance" if d > 0 else "below chance" if d < 0 else "not distinguishable from chance"
            )
            if too_few(r["cases"]):
                verdict = _few(r["cases"])
            bits.append(
                f"{level} {num(r['purity'])} ({interval(r['ci_low'], r['ci_high'], estimate=r['purity'], n_cases=r['cases'])}) against {num(r['chance'])} "
                f"by chance: {verdict}"
            )
        n = int(p["cases"].min())
        text = (
            f"{model} (kNN purity, k = {int(p['k'].iloc[0])}, same-case neighbours excluded; {cases(n)}): "
            + "; ".join(bits)
            + "."
        )
        if {"modality", "label"} <= set(p.index):
            text += (
                " Purity cannot rise from modality to label (a neighbour with the query's label has its modality "
                "too), so each level is read against its own chance value, not against the other levels."
            )
        sil = p["silhouette"].dropna()
        if len(sil):
            text += (
                " Silhouette (over images, same case included; a point value without an interval, so levels are "
                "not ranked by it): " + ", ".join(f"{lv} {num(v)}" for lv, v in sil.items()) + "."
            )
        out.append(text)
    return out


def _ranking(
    table: pd.DataFrame,
    value: str,
    low: str,
    high: str,
    what: str,
    chance: str | None = None,
    paired: Mapping | None = None,
) -> str:
    """Best row by `value` (with its chance value when the `chance` column is there) and the runner-up; whether
    the two are ranked is judged on `paired` (a `classify.top_two` row: best minus runner-up over the same test
    cases; its 95 % CI must exclude 0) where it names these two, else on whether their intervals overlap (an
    unpaired, conservative check). Rows whose values read the same at `DIGITS` decimals are named as tied, not
    ranked."""
    t = table.sort_values(value, ascending=False)
    best = t.iloc[0]
    tied = tied_at_shown(t, value, best[value])
    against = (
        f" against {num(best[chance])} by chance"
        if chance and chance in t and not pd.isna(best[chance])
        else ""
    )
    if len(tied) > 1:
        who = f"all {len(tied)} models" if len(tied) == len(t) else f"{len(tied)} of {len(t)} models"
        return (
            f"Highest {what}: {who} read {num(best[value])} ({', '.join(tied)}; {cases(best['cases'])}){against}; "
            f"the table does not rank them (equal to {DIGITS} decimals)."
        )
    text = f"Highest {what}: {best['model']}, {num(best[value])} ({interval(best[low], best[high], estimate=best[value], n_cases=best['cases'])}; {cases(best['cases'])}){against}"
    if len(t) < 2:
        return text + "."
    nxt = t.iloc[1]
    text += f"; next {nxt['model']}, {num(nxt[value])} ({interval(nxt[low], nxt[high], estimate=nxt[value], n_cases=nxt['cases'])})"
    if too_few(best["cases"]):
        return f"{text}: {_few(best['cases'])} whether they differ."
    if paired is not None and (paired["model"], paired["runner_up"]) == (best["model"], nxt["model"]):
        _, p = _p_text(paired, "")
        text += (
            f"; paired difference {signed(paired['difference'])} "
            f"({interval(paired['low'], paired['high'], diff=True, estimate=paired['difference'])}; {p}; "
            f"{cases(paired['n_cases'])})"
        )
        if direction(paired["low"], paired["high"]) > 0:
            return f"{text}: {best['model']} ranks above {nxt['model']} (one comparison, of the two highest point estimates)."
        return f"{text}: the paired interval contains 0, so the ranking of these two is not established."
    if best[low] > nxt[high]:
        return f"{text}: the intervals do not overlap (an unpaired check)."
    return (
        f"{text}: the intervals overlap (an unpaired check), so the ranking of these two is not established."
    )


METRIC_NAMES = {"f1_macro": "macro-F1", "f1_micro": "micro-F1", "accuracy": "accuracy",
                "roc_auc_macro": "macro ROC-AUC", "roc_auc_micro": "micro ROC-AUC"}  # fmt: skip


def classification_sentences(
    wide: pd.DataFrame,
    metric: str = "f1_macro",
    baselines: Sequence[str] = tuple(BASELINE_NAMES),
    comparisons: pd.DataFrame | None = None,
    leaders: pd.DataFrame | None = None,
) -> list[str]:
    """Findings of the classification table (`classify.wide_ci`: one row per model and head, `<metric>`,
    `<metric> lo`, `<metric> hi`[, `<metric> chance`], `cases`): the best model per head against chance, and whether
    it ranks above the runner-up (from `leaders`, `classify.top_two` rows of both heads, where given; else from
    whether their intervals overlap); each model against each baseline from the paired, case-level tests of `comparisons`
    (`classify.against_baselines` rows of both heads: Holm-adjusted p, `comparison_sentence`); whether the kNN
    and probe rankings agree."""
    lo, hi = f"{metric} lo", f"{metric} hi"
    name = METRIC_NAMES.get(metric, metric)
    out = []
    orders = {}
    for head, part in wide.groupby("head", sort=False):
        top = None
        if leaders is not None and not leaders.empty:
            sel = leaders[(leaders["head"] == head) & (leaders["metric"] == metric)]
            top = None if sel.empty else sel.iloc[0]
        out.append(_ranking(part, metric, lo, hi, f"{name} with the {head}", f"{metric} chance", top))
        orders[head] = shown_order(part, metric)
        if comparisons is None or comparisons.empty:
            continue
        sel = comparisons[(comparisons["head"] == head) & (comparisons["metric"] == metric)]
        for _, row in sel.iterrows():
            out.append(comparison_sentence(row, "baseline", measure=f"{name} ({head})"))
    if len(orders) == 2 and all(sum(len(g) for g, _ in o) > 1 for o in orders.values()):
        (h1, o1), (h2, o2) = orders.items()
        if len(o1) == 1 and len(o2) == 1:
            out.append(
                f"Every model reads the same {name} under each head ({h1} {o1[0][1]}, {h2} {o2[0][1]}): "
                "neither head ranks the models."
            )
            return out
        shown = f"({h1}: {order_text(o1)}; {h2}: {order_text(o2)})"
        lead = f"The {h1} and {h2} orders of the models by {name} as shown ({DIGITS} decimals; = joins equal values)"
        if [sorted(g) for g, _ in o1] == [sorted(g) for g, _ in o2]:
            out.append(
                f"{lead} agree {shown}; orders within overlapping intervals are not established (an unpaired check)."
            )
            return out
        parts = {head: part.set_index("model") for head, part in wide.groupby("head", sort=False)}
        firm = _swaps_apart(parts[h1], parts[h2], metric, lo, hi)
        if firm:
            out.append(
                f"{lead} differ {shown}, and the heads rank {', '.join(f'{a} and {b}' for a, b in firm)} in "
                "opposite orders with intervals that do not overlap under either head (an unpaired check)."
            )
        else:
            out.append(
                f"{lead} differ {shown}, but only between models whose intervals overlap under at least one "
                "head, so no difference in ranking between the heads is shown (an unpaired, conservative check)."
            )
    return out


def _swaps_apart(a: pd.DataFrame, b: pd.DataFrame, value: str, lo: str, hi: str) -> list[tuple[str, str]]:
    """Pairs of models (x, y) that table `a` ranks x above y and table `b` y above x (values as shown), each with
    intervals that do not overlap in both tables (rows indexed by model)."""
    models = [m for m in a.index if m in b.index]
    return [
        (x, y)
        for x in models
        for y in models
        if num(a.at[x, value]) > num(a.at[y, value])
        and num(b.at[y, value]) > num(b.at[x, value])
        and a.at[x, lo] > a.at[y, hi]
        and b.at[y, lo] > b.at[x, hi]
    ]


def knn_k1_sentence(k_by_model: Mapping[str, int], wide: pd.DataFrame | None = None) -> str | None:
    """A note for the models whose kNN ran with k = 1 on test (`k_by_model`: model -> the k applied on test):
    their kNN answers the label of the first neighbour, so its accuracy is micro P@1 of the retrieval notebook
    (the same search, same-case neighbours excluded), and its ROC-AUC is the mean of sensitivity and specificity
    (scores of 0 or 1). None when no model ran with k = 1."""
    ones = [m for m, k in k_by_model.items() if int(k) == 1]
    if not ones:
        return None
    who = "every model" if len(ones) == len(k_by_model) else ", ".join(ones)
    text = (
        f"With k = 1 (selected for {who}), the kNN predicts the label of the first neighbour, so its accuracy "
        "equals micro modified P@1 of notebook 3 (the same search, neighbours of the query's own case excluded; "
        "the two differ only by test queries whose class has no index image, which P@1 leaves out) and adds no "
        "evidence beyond it"
    )
    if wide is not None and "accuracy" in wide:
        part = wide[(wide["head"] == "kNN") & wide["model"].isin(ones)]
        if len(part):
            text += ": " + ", ".join(f"{r['model']} {num(r['accuracy'])}" for _, r in part.iterrows())
    return text + (
        ". Its class scores are 0 or 1, so its ROC-AUC rests on a single threshold: per class (macro), or over all"
        " (image, class) pairs (micro), it is the mean of sensitivity and specificity, so micro ROC-AUC adds little"
        " beyond accuracy; set against a baseline with another k, part of an ROC-AUC difference comes from how"
        " many values its scores can take."
    )


def best_worst_sentence(best: pd.DataFrame, worst: pd.DataFrame, value: str, label: str = "class") -> str:
    """Whether the ends of a best/worst ranking (`retrieval.best_worst`) differ: the lowest lower bound among the
    highest rows against the highest upper bound among the lowest rows (rows with at least `MIN_CASES` cases)."""
    lo, hi = f"{value}_lo", f"{value}_hi"
    b, w = best[~few_cases(best)], worst[~few_cases(worst)]
    if b.empty or w.empty:
        return (
            f"Too few listed {label}es with at least {MIN_CASES} cases at one end to compare intervals: the figure "
            "orders them by point estimates alone."
        )
    x, y = b.loc[b[lo].idxmin()], w.loc[w[hi].idxmax()]
    ends = (
        f"{x[label]} {num(x[value])} ({interval(x[lo], x[hi], estimate=x[value])}) at the top, {y[label]} "
        f"{num(y[value])} ({interval(y[lo], y[hi], estimate=y[value])}) at the bottom"
    )
    if x[lo] > y[hi]:
        return (
            f"Among the listed {label}es with at least {MIN_CASES} cases, every highest one lies above every lowest "
            f"one (closest: {ends}): "
            "the two ends differ; orders within each end are not established."
        )
    return (
        f"Among the listed {label}es with at least {MIN_CASES} cases, the intervals at the two ends overlap ({ends}): "
        f"the figure orders the {label}es by point estimates, and "
        "that order is not established."
    )


def probe_epoch_note(chosen: Mapping[str, int], max_epochs: int) -> str | None:
    """A note naming the probes whose chosen epoch is the last one allowed (they may not have converged); None
    when no probe stopped there."""
    last = [m for m, e in chosen.items() if int(e) >= max_epochs]
    if not last:
        return None
    return (
        f"{len(last)} of {len(chosen)} probes chose the last allowed epoch ({max_epochs}): {', '.join(last)}. Their "
        "selection accuracy was still at its best at the end, so they may not have converged; a longer run could "
        "choose a later epoch."
    )
