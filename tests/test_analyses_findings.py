"""Sentences of cbmir.analyses.findings checked against the random tables they were written from."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from cbmir.analyses import findings

NUM = r"[+-]?\d+\.\d{3}"
P = r"p < 0\.001|p < 0\.05|p = \d\.\d{3}"
ZERO = r"(?:, i\.e\. (it reaches 0|it stops just short of 0 \(at [+-]\d\.\de-\d\d\)))?"  # a bound printing +0.000


def r3(x: float) -> str:
    t = f"{x:.3f}"
    return "0.000" if t == "-0.000" else t  # a rounded negative zero reads as the tables write it


def s3(x: float) -> str:
    t = f"{x:+.3f}"
    return "+0.000" if t in ("-0.000", "+0.000") else t


def random_bounds(rng, diff: float) -> tuple[float, float, float]:
    """(estimate, low, high) around `diff`; in a third of the draws one bound is 0, float noise or rounds to 0
    (the estimate then moves to the middle of the interval)."""
    low, high = diff - rng.exponential(0.08), diff + rng.exponential(0.08)
    if rng.random() < 1 / 3:
        zero = float(rng.choice([0.0, 1.1e-17, -1.1e-17, 3e-4, -3e-4, 4.9e-4, -4.9e-4]))
        low, high = (zero, max(high, zero + 0.01)) if rng.random() < 0.5 else (min(low, zero - 0.01), zero)
        diff = (low + high) / 2
    return diff, low, high


NO_CI = f"no 95 % CI with fewer than {findings.MIN_CASES} cases"


def interval_back(text: str, n_cases: int, low: float, high: float, diff: bool = False, estimate=None) -> str:
    """A sentence about fewer than MIN_CASES cases quotes no interval (NO_CI instead): check that, then put back the
    interval it quotes otherwise (the first NO_CI), so that the rest of the sentence is checked as with enough cases."""
    assert (NO_CI in text) == (n_cases < findings.MIN_CASES), text
    return text.replace(NO_CI, findings.interval(low, high, diff=diff, estimate=estimate), 1)


def check_zero_note(low: float, high: float, note: str | None) -> None:
    """The note after a difference's interval: present exactly when a bound prints as +0.000, and true."""
    near = [b for b in (low, high) if abs(b) < 5e-4]
    assert bool(note) == bool(near), (low, high, note)
    if near:
        touches = low <= 1e-9 and high >= -1e-9  # the interval contains 0 or ends on it (up to float noise)
        assert (note == "it reaches 0") == touches
        if not touches:
            assert note.startswith("it stops just short of 0") and f"{near[0]:+.1e}" in note


def random_comparison(rng, other: str) -> dict:
    diff, low, high = random_bounds(rng, rng.normal(0, 0.1))
    return {
        "model": f"m{int(rng.integers(0, 9))}",
        other: str(rng.choice(["raw-pixels", "random-vit", "enc-a"])),
        "average": str(rng.choice(["micro", "macro"])),
        "N": int(rng.choice([1, 3, 5, 10])),
        "difference": diff,
        "low": low,
        "high": high,
        "p_value": float(rng.choice([rng.random(), 1e-4])),
        "p_holm": float(rng.choice([rng.random(), np.nan])),
        "n_cases": int(rng.integers(1, 50)),
    }


@pytest.mark.parametrize("seed", range(200))
def test_comparison_sentences_agree_with_their_row(seed):
    rng = np.random.default_rng(seed)
    other = "best" if seed % 2 else "baseline"
    row = random_comparison(rng, other)
    text = findings.comparison_sentence(row, other)
    text = interval_back(text, row["n_cases"], row["low"], row["high"], diff=True, estimate=row["difference"])
    m = re.search(
        rf"difference ({NUM}) \(95 % CI ({NUM}) to ({NUM}){ZERO}; ({P})( \(Holm-adjusted[a-z -]*\))?; (\d+) cases?\)",
        text,
    )
    assert m, text
    assert m.group(1) == s3(row["difference"])
    assert (m.group(2), m.group(3)) == (s3(row["low"]), s3(row["high"]))
    check_zero_note(row["low"], row["high"], m.group(4))
    m = re.search(
        rf"difference {NUM} \(95 % CI {NUM} to {NUM}{ZERO}; ({P})( \(Holm[a-z -]*\))?; (\d+) cases?\)", text
    )
    holm = not np.isnan(row["p_holm"])
    p = row["p_holm"] if holm else row["p_value"]
    want = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    assert m.group(2) == ("p < 0.05" if p < 0.05 and want == "p = 0.050" else want)
    assert bool(m.group(3)) == holm
    assert int(m.group(4)) == row["n_cases"]
    assert f"{row['average']} P@{row['N']}" in text
    if row["n_cases"] < findings.MIN_CASES:
        assert text.endswith(
            f"too few cases ({m.group(4)} case{'s' if row['n_cases'] > 1 else ''}; at least 5 needed) to tell."
        )
        assert "higher" not in text and "lower" not in text and "distinguishable" not in text
    elif row["low"] > 1e-9 and not (holm and row["p_holm"] >= 0.05):
        assert " scores higher than " in text and row["difference"] > 0
    elif row["high"] < -1e-9 and not (holm and row["p_holm"] >= 0.05):
        assert " scores lower than " in text and row["difference"] < 0
    else:  # the CI contains 0, or the Holm-adjusted p is 0.05 or more
        assert " is not distinguishable from " in text
        assert "higher" not in text and "lower" not in text
        excludes = row["low"] > 1e-9 or row["high"] < -1e-9
        assert (
            "the unadjusted 95 % CI excludes 0, but the Holm-adjusted p does not reach 0.05" in text
        ) == excludes
    if row[other] == "raw-pixels":
        assert "the raw-pixel baseline" in text


@pytest.mark.parametrize("seed", range(100))
def test_chance_and_conditional_sentences_agree_with_their_row(seed):
    rng = np.random.default_rng(seed)
    est = rng.random()
    low, high, ch = est - rng.exponential(0.05), est + rng.exponential(0.05), rng.random()
    text = findings.chance_sentence("m", "micro P@1", est, low, high, ch, 7)
    assert NO_CI not in text
    few = findings.chance_sentence("m", "micro P@1", est, low, high, ch, 4)
    assert f"micro P@1 {r3(est)} ({NO_CI}; 4 cases) against {r3(ch)} by chance: too few cases" in few
    m = re.search(
        rf"micro P@1 ({NUM}) \(95 % CI ({NUM}) to ({NUM}); 7 cases\) against ({NUM}) by chance: (.*)\.$", text
    )
    assert m, text
    assert m.groups()[:4] == (r3(est), r3(low), r3(high), r3(ch))
    want = "above chance" if low > ch else "below chance" if high < ch else "not distinguishable from chance"
    assert m.group(5) == want

    share, chance = rng.random(), rng.random()
    d, d_lo, d_hi = random_bounds(rng, share - chance)
    row = {
        "region": str(rng.choice(["all regions", "CT/lung"])),
        "N": 5,
        "share": share,
        "chance": chance,
        "difference": d,
        "difference_lo": d_lo,
        "difference_hi": d_hi,
        "n_queries": int(rng.choice([1, 40])),
        "n_cases": int(rng.choice([1, 12])),
    }
    text = findings.conditional_sentence(row, "m")
    text = interval_back(text, row["n_cases"], d_lo, d_hi, diff=True, estimate=d)
    m = re.search(
        rf"in ({NUM}) against ({NUM}) by chance, difference ({NUM}) \(95 % CI ({NUM}) to ({NUM}){ZERO}; (\d+) quer(?:y|ies), (\d+) cases?\): (.*)\.$",
        text,
    )
    assert m, text
    assert m.groups()[:5] == (
        r3(share),
        r3(chance),
        s3(d),
        s3(row["difference_lo"]),
        s3(row["difference_hi"]),
    )
    lo, hi = row["difference_lo"], row["difference_hi"]
    check_zero_note(lo, hi, m.group(6))
    assert int(m.group(7)) == row["n_queries"] and int(m.group(8)) == row["n_cases"]
    assert (f"{row['n_queries']} query," if row["n_queries"] == 1 else f"{row['n_queries']} queries,") in text
    if row["n_cases"] < findings.MIN_CASES:
        assert m.group(9).startswith("too few cases (1 case;")
    else:
        assert m.group(9) == (
            "above chance"
            if lo > 1e-9
            else "below chance"
            if hi < -1e-9
            else "not distinguishable from chance"
        )


def random_curve(rng, xs) -> pd.DataFrame:
    kind = rng.integers(0, 4)
    base = rng.random() * 0.5
    steps = {
        0: np.zeros(len(xs)),
        1: np.linspace(0, 0.4, len(xs)),
        2: np.minimum(np.arange(len(xs)), 2) * 0.2,
    }[min(kind, 2)] * (1 if kind < 3 else -1)
    values = base + 0.3 + steps + rng.normal(0, 0.02, len(xs))
    width = rng.exponential(0.05, len(xs))
    return pd.DataFrame({"N": xs, "micro": values, "micro_lo": values - width, "micro_hi": values + width})


@pytest.mark.parametrize("seed", range(150))
def test_shape_sentences_agree_with_the_curve(seed):
    rng = np.random.default_rng(seed)
    xs = [1, 5, 10, 50, 100] if seed % 2 else [1, 10]
    t = random_curve(rng, xs)
    text = findings.shape_sentence(t, "m")
    first, last = t.iloc[0], t.iloc[-1]
    assert (
        f"from {r3(first['micro'])} (95 % CI {r3(first['micro_lo'])} to {r3(first['micro_hi'])}) at N = 1"
        in text
    )
    assert (
        f"to {r3(last['micro'])} (95 % CI {r3(last['micro_lo'])} to {r3(last['micro_hi'])}) at N = {xs[-1]}"
        in text
    )

    def up(a, b):
        return b["micro_lo"] > a["micro_hi"]

    def down(a, b):
        return b["micro_hi"] < a["micro_lo"]

    if "flattens" in text:
        mid = t[t["N"] == int(re.search(r"up to N = (\d+)", text).group(1))].iloc[0]
        assert up(first, mid) if " rises up to" in text else down(first, mid)
        assert not up(mid, last) and not down(mid, last)
    elif "it rises" in text:
        assert up(first, last) and text.endswith(
            "(the bands at the two ends do not overlap; an unpaired check)."
        )
    elif "it falls" in text:
        assert down(first, last) and text.endswith(
            "(the bands at the two ends do not overlap; an unpaired check)."
        )
    else:
        assert "is not shown to change (its 95 % bands at the two ends overlap" in text
        assert not up(first, last) and not down(first, last)


@pytest.mark.parametrize("seed", range(60))
def test_shape_sentences_follow_the_paired_changes(seed):
    """With paired changes, the verdict is that of their intervals, whatever the bands say."""
    rng = np.random.default_rng(seed)
    xs = [1, 5, 10, 50, 100]
    t = random_curve(rng, xs)
    pairs = [(1, 10), (10, 100), (1, 100)]
    lows = rng.normal(0, 0.05, 3)
    changes = pd.DataFrame(
        {"average": "micro", "from_N": [a for a, _ in pairs], "to_N": [b for _, b in pairs],
         "difference": lows + 0.02, "low": lows, "high": lows + 0.04, "p_value": rng.random(3), "p_min": 0.002,
         "n_cases": 30, "n_queries": 90}
    )  # fmt: skip
    other = changes.assign(average="macro", low=-1.0, high=1.0)
    text = findings.shape_sentence(t, "m", middle=10, changes=pd.concat([changes, other]))
    sign = [1 if lo > 0 else -1 if lo + 0.04 < 0 else 0 for lo in lows]
    if sign[0] and not sign[1]:
        assert f"it {'rises' if sign[0] > 0 else 'falls'} up to N = 10" in text
        assert (
            "and is not shown to change after it (paired difference" in text
        )  # not "flattens": no evidence of it
        assert f"paired difference {findings.signed(lows[0] + 0.02)}" in text
    elif sign[2]:
        assert (
            f": it {'rises' if sign[2] > 0 else 'falls'} (paired difference {findings.signed(lows[2] + 0.02)}"
            in text
        )
    else:
        assert ": it is not shown to change (paired difference" in text
    assert "over the same queries" in text or "not shown to change after it" in text
    assert "unpaired" not in text
    # computed for other points: the bands decide, and the sentence says it is unpaired
    moved = changes.assign(from_N=2)
    assert "unpaired" in findings.shape_sentence(t, "m", middle=10, changes=moved)


@pytest.mark.parametrize(
    ("low", "verdict"), [(0.02, "ranks above b"), (-0.01, "the paired interval contains 0")]
)
def test_the_ranking_of_the_two_best_follows_their_paired_comparison(low, verdict):
    """Overlapping bands, yet a paired interval above 0 ranks them; one containing 0 does not."""
    wide = pd.DataFrame(
        {"model": ["a", "b", "c"], "head": "kNN", "f1_macro": [0.80, 0.75, 0.5], "f1_macro lo": [0.7, 0.65, 0.4],
         "f1_macro hi": [0.9, 0.85, 0.6], "f1_macro chance": 0.3, "cases": 20}
    )  # fmt: skip
    leaders = pd.DataFrame(
        [{"model": "a", "runner_up": "b", "head": "kNN", "metric": "f1_macro", "difference": 0.05, "low": low,
          "high": 0.09, "p_value": 0.01, "p_min": 0.002, "n_queries": 40, "n_cases": 20}]
    )  # fmt: skip
    line = findings.classification_sentences(wide, leaders=leaders)[0]
    assert f"paired difference +0.050 (95 % CI {findings.signed(low)} to +0.090" in line and verdict in line
    assert "unpaired" not in line
    plain = findings.classification_sentences(wide)[0]  # without it: the unpaired rule, saying so
    assert plain.endswith(
        "the intervals overlap (an unpaired check), so the ranking of these two is not established."
    )
    other = leaders.assign(runner_up="c")  # a row for another pair is not used
    assert findings.classification_sentences(wide, leaders=other)[0] == plain


def test_the_conditional_scope_and_the_verdict_across_n():
    rows = [
        {"model": m, "N": n, "region": reg, "difference": 0.05, "difference_lo": lo, "difference_hi": lo + 0.1,
         "n_cases": 20, "p_holm": p}
        for m, shift in (("enc", 0.0), ("raw-pixels", -0.1))
        for n, lo, p in ((1, -0.01, 0.3), (3, 0.02, 0.01), (5, 0.03, 0.2), (10, 0.04, 0.01))
        for reg in ("all regions", "CT/lung", "MR/brain", *(("XR/chest",) if n < 10 else ()))
        for lo in (lo + shift,)
    ]  # fmt: skip
    cond = pd.DataFrame(rows)
    across = findings.conditional_across_n(cond.assign(n_queries=40))
    assert across[0].startswith(  # N = 5: the interval excludes 0, but the adjusted p does not reach 0.05
        "enc, all regions: not distinguishable from chance at N = 1 (40 queries, 20 cases) and 5 (40 queries, 20 "
        "cases); above chance at N = 3 (40 queries, 20 cases) and 10 (40 queries, 20 cases): the verdict changes "
        "with N, and so do the queries"
    )
    assert across[1] == (
        "raw-pixels, all regions: not distinguishable from chance at every N shown (N = 1 (40 queries, 20 cases), "
        "3 (40 queries, 20 cases), 5 (40 queries, 20 cases) and 10 (40 queries, 20 cases))."
    )
    left = pd.DataFrame([{"region": "XR/chest", "index images": 8, "N left out": "10", "queries": 5}])
    regions = ["CT/lung", "MR/brain", "XR/chest", "US/neck"]
    at10 = findings.conditional_scope_sentence(cond[cond["N"] == 10], regions, left)
    assert at10.startswith(
        'At N = 10, "all regions" pools the queries of CT/lung and MR/brain; left out at this N: '
    )
    assert "XR/chest (N reaches its index images" in at10
    assert "US/neck (no query with an anatomy-correct neighbour for every model)" in at10
    at5 = findings.conditional_scope_sentence(cond[cond["N"] == 5], regions[:3], left)
    assert at5 == 'At N = 5, "all regions" pools the queries of CT/lung, MR/brain and XR/chest.'


def test_the_baseline_claim_counts_the_other_n_and_averages_beside_its_verdict():
    rows = [
        {"model": m, "baseline": "raw-pixels", "average": avg, "N": n, "difference": 0.1, "low": low,
         "high": low + 0.2, "p_value": 0.01, "p_holm": p_holm, "n_cases": 30}
        for avg in ("micro", "macro") for n in (1, 10)
        for m, low, p_holm in (("a", 0.05 if n == 10 else -0.05, 0.01), ("b", 0.02, 0.2 if avg == "macro" else 0.01))
    ]  # fmt: skip
    text = findings._higher_elsewhere(pd.DataFrame(rows), 1, "micro")
    assert text == (
        "; at the other N and averages of the tables, pairs higher (not counted in the verdict): macro P@1 0 of 2, "
        "macro P@10 1 of 2, micro P@10 2 of 2"
    )
    assert findings._higher_elsewhere(pd.DataFrame(rows).assign(n_cases=3), 1, "micro") == ""


def test_summary_level_and_index_size_sentences():
    rng = np.random.default_rng(0)
    rows = []
    for model in ("a", "raw-pixels"):
        for average in ("micro", "macro"):
            for n in (1, 5):
                est = rng.random()
                rows.append(
                    {
                        "model": model,
                        "average": average,
                        "N": n,
                        "estimate": est,
                        "low": est - 0.1,
                        "high": est + 0.1,
                        "chance": 0.2,
                        "n_cases": 9,
                    }
                )
    table = pd.DataFrame(rows)
    table.attrs["best"] = "a"
    base = pd.DataFrame(
        [
            {
                **random_comparison(rng, "baseline"),
                "model": "a",
                "baseline": "raw-pixels",
                "average": "micro",
                "N": 1,
            }
        ]
    )
    out = findings.summary_sentences(table, baselines=base)
    a1 = table[(table["model"] == "a") & (table["N"] == 1) & (table["average"] == "micro")].iloc[0]
    assert out[0].startswith(f"Highest micro P@1 (the ranking rule): a, {r3(a1['estimate'])}")
    assert len(out) == 1 + 2 + 1 and "the raw-pixel baseline" in out[-1]
    assert "paired" not in out[0]  # no comparison with the best was given

    def versus_best(low, high, n_cases=9):
        return {"model": "b", "best": "a", "average": "micro", "N": 1, "difference": (low + high) / 2,
                "low": low, "high": high, "p_value": 0.01, "n_cases": n_cases}  # fmt: skip

    tied = pd.DataFrame([versus_best(-0.1, 0.05), versus_best(-0.2, -0.01, n_cases=3)])
    out = findings.summary_sentences(table, best=tied)
    assert out[0].endswith(
        "; none of the 2 other models is distinguishable from it in the paired comparisons below, so this order "
        "does not single it out."
    )
    out = findings.summary_sentences(
        table, best=pd.DataFrame([versus_best(-0.1, 0.05), versus_best(-0.2, -0.01)])
    )
    assert out[0].endswith(
        "; 1 of the 2 other models is not distinguishable from it in the paired comparisons below."
    )
    out = findings.summary_sentences(table, best=pd.DataFrame([versus_best(-0.2, -0.01)]))
    assert out[0].endswith("; the other model scores lower in the paired comparisons below.")

    levels = pd.DataFrame(
        {
            "level": ["modality", "region", "label"],
            "N": 1,
            "micro": [0.99, 0.9, 0.5],
            "micro_lo": [0.97, 0.85, 0.4],
            "micro_hi": [1.0, 0.95, 0.6],
            "chance_micro": [0.5, 0.3, 0.1],
            "n_cases": 13,
        }
    )
    text = findings.level_sentences(levels, "m")
    assert len(text) == 3 and not any(
        "label-level" in t or "reliably" in t for t in text
    )  # no unpaired contrast
    contrast = pd.DataFrame([random_contrast(rng, "m", 1), random_contrast(rng, "other", 1)])
    text = findings.level_sentences(levels, "m", contrast=contrast)
    assert len(text) == 4 and text[-1] == findings.contrast_sentence(contrast.iloc[0])
    few = findings.level_sentences(levels.assign(n_cases=2), "m")
    assert all("too few cases" in t for t in few)

    size = pd.DataFrame(random_size_curve(rng, "plain P@N", n_cases=13))
    assert "too few cases" in findings.index_size_sentence(size.assign(n_cases=3), "m")
    with pytest.raises(ValueError, match="no rows"):
        findings.index_size_sentence(size, "m", n=3)


def random_size_curve(rng, metric: str, n_cases: int | None = None, ceiling: bool = True) -> list[dict]:
    """Rows of one model's index-size curve at N = 10 (3 sizes; the middle one out of order)."""
    values = np.sort(rng.uniform(0.1, 0.9, 3))[:: 1 if rng.random() < 0.7 else -1]
    chances = np.sort(rng.uniform(0.0, 0.3, 3))
    n_cases = int(rng.choice([3, 40])) if n_cases is None else n_cases
    rows = []
    for c, v, ch in zip((10, 4, 20), values[[1, 0, 2]], chances[[1, 0, 2]], strict=True):
        low, high = v - rng.exponential(0.06), v + rng.exponential(0.06)
        rows.append({"metric": metric, "N": 10, "average": "micro", "index_cases": c, "estimate": v, "low": low,
                     "high": high, "chance": ch, "n_cases": n_cases}
                    | ({"ceiling": rng.uniform(0.5, 1.0)} if ceiling else {}))  # fmt: skip
    return rows


@pytest.mark.parametrize("seed", range(100))
def test_index_size_sentence_judges_the_share_it_quotes(seed):
    rng = np.random.default_rng(seed)
    metric = "plain P@N" if seed % 2 else "hit@N"
    part = pd.DataFrame(random_size_curve(rng, metric, ceiling=bool(seed % 3)))
    if seed % 5 == 0:
        part["index_images"] = part["index_cases"] * 3.5
    text = findings.index_size_sentence(part, "m", metric=metric)
    a = part[part["index_cases"] == 4].iloc[0]
    b = part[part["index_cases"] == 20].iloc[0]
    name = (
        "plain P@10 \\(hits among the first 10 / 10\\)"
        if metric == "plain P@N"
        else ("hit@10 \\(the share of queries with at least one image of their label among the first 10\\)")
    )
    images = ("(?: \\(14 images, 20 % of the full index's\\))?", "(?: \\(70 images\\))?")
    m = re.match(
        rf"m: micro {name}, over ([\d,]+(?: to [\d,]+)?) test-query cases, goes from ({NUM}) \(95 % CI ({NUM}) to ({NUM})\) against ({NUM}) by chance at 4 index "
        rf"cases{images[0]} to ({NUM}) \(95 % CI ({NUM}) to ({NUM})\) against ({NUM}) by chance at 20 index "
        rf"cases{images[1]}(.*): ([^.]*)\.$",
        text,
    )
    assert m, text
    lo, hi = int(part["n_cases"].min()), int(part["n_cases"].max())
    assert m.group(1) == (f"{lo:,}" if lo == hi else f"{lo:,} to {hi:,}")
    assert m.group(2, 3, 4, 5) == (r3(a["estimate"]), r3(a["low"]), r3(a["high"]), r3(a["chance"]))
    assert m.group(6, 7, 8, 9) == (r3(b["estimate"]), r3(b["low"]), r3(b["high"]), r3(b["chance"]))
    assert ("images" in text) == ("index_images" in part)
    room = "ceiling" in part and (a["ceiling"] > a["chance"]) and (b["ceiling"] > b["chance"])
    scale = [(r["ceiling"] - r["chance"]) if room else 1.0 for r in (a, b)]
    judged = [
        tuple((r[c] - r["chance"]) / sc for c in ("estimate", "low", "high"))
        for r, sc in zip((a, b), scale, strict=True)
    ]
    middle, verdict = m.group(10), m.group(11)
    if room:
        reach = "min(n_c, 10) / 10" if metric == "plain P@N" else "1 where its class is in the index, else 0"
        assert middle == (
            f". The highest value it can reach (per query {reach}, averaged) is {r3(a['ceiling'])} at the smallest "
            f"and {r3(b['ceiling'])} at the full index; as a share of the room between chance and that ceiling, "
            f"(P - chance) / (ceiling - chance), it goes from {r3(judged[0][0])} (95 % CI {r3(judged[0][1])} to "
            f"{r3(judged[0][2])}) to {r3(judged[1][0])} (95 % CI {r3(judged[1][1])} to {r3(judged[1][2])})"
        ), middle
        what = "that share"
    else:
        assert middle.startswith(
            f"; its excess over chance goes from {s3(judged[0][0])} (95 % CI {s3(judged[0][1])}"
        )
        assert "highest value" not in text
        what = "the excess"
    if a["n_cases"] < findings.MIN_CASES:
        assert verdict.startswith("too few cases")
    elif judged[1][1] > judged[0][2]:
        assert verdict.startswith(f"it rises (the bands of {what} at the two ends do not overlap")
    elif judged[1][2] < judged[0][1]:
        assert verdict.startswith(f"it falls (the bands of {what}")
    else:
        assert verdict.startswith("it is not shown to change")
    mean = part.drop(columns="index_images", errors="ignore").assign(index_cases=part["index_cases"] + 0.4)
    assert "at 4.4 index cases (mean over repeats) to" in findings.index_size_sentence(
        mean, "m", metric=metric
    )


def test_an_index_size_rise_that_is_only_the_ceiling_rising_is_not_a_rise():
    """The excess over chance doubles, but so does the room above chance: the share of it stays at one half."""
    rows = [{"metric": "plain P@N", "N": 10, "average": "micro", "index_cases": c, "index_images": c * 3,
             "estimate": e, "low": e - 0.02, "high": e + 0.02, "chance": 0.05, "ceiling": ceil, "n_cases": 40}
            for c, e, ceil in ((10, 0.25, 0.45), (40, 0.45, 0.85))]  # fmt: skip
    part = pd.DataFrame(rows)
    assert findings.index_size_change(part.drop(columns="ceiling"))[2] == 1  # on the excess alone: a "rise"
    assert findings.index_size_change(part)[2] == 0
    text = findings.index_size_sentence(part, "m")
    assert "at 10 index cases (30 images, 25 % of the full index's)" in text
    assert "it goes from 0.500 (95 % CI 0.450 to 0.550) to 0.500 (95 % CI 0.475 to 0.525)" in text
    assert text.endswith(
        "it is not shown to change (the bands of that share at the two ends overlap; an unpaired check)."
    )


def test_the_index_size_verdict_says_when_the_index_barely_shrinks():
    def verdict(small_images: float) -> str:
        rows = [{"model": "m", "metric": "plain P@N", "N": 10, "average": "micro", "index_cases": c,
                 "index_images": i, "estimate": 0.4, "low": 0.3, "high": 0.5, "chance": 0.05, "ceiling": 0.9,
                 "n_cases": 40} for c, i in ((10, small_images), (40, 100))]  # fmt: skip
        claims = findings.paper_claims(["m"], "radmini", index_size_ran=True)
        got = findings.claim_verdicts(claims, _p1_table({"m": 0.5}), index_size=pd.DataFrame(rows))
        row = got[got["claim"] == findings.PAPER_CLAIMS[3][1]].iloc[0]
        assert row["testable"] == (row["verdict"] != findings.UNTESTABLE)
        return row["verdict"], row["evidence"]

    (narrow_verdict, narrow), (wide_verdict, wide) = verdict(63), verdict(25)
    assert narrow_verdict == findings.UNTESTABLE and wide_verdict == findings.NOT_SHOWN
    assert (
        "the smallest index holds 10 index cases of 40 and 63 % of the full index's images (fewer cases"
        in narrow
    )
    assert "so this run cannot test the claim" in narrow
    assert "10 index cases of 40 and 25 % of the full index's images (notebook 4)" in wide
    assert "cannot test" not in wide


def test_paper_claims():
    offline = findings.paper_claims(
        ["litemedsam", "raw-pixels", "random-vit"], "radmini", regions_with_several_labels=3
    )
    assert list(offline["testable"]) == [False, True, True, False, False]
    assert "no image-text model" in offline.loc[0, "why"]
    paper = findings.paper_claims(
        ["biomedclip", "dinov2-b14"], "paper", index_size_ran=True, paper_setup=True
    )
    assert list(paper["testable"]) == [True, False, False, True, True]
    # the flag, not the name, says whether the run holds the paper's data
    named = findings.paper_claims(["biomedclip", "dinov2-b14"], "paper", index_size_ran=True)
    assert not named["testable"].iloc[-1] and "paper_setup: false" in named["why"].iloc[-1]
    published = findings.paper_claims(["biomedclip"], "paper-published", paper_setup=True)
    assert published["testable"].iloc[-1] and published["why"].iloc[-1] == "same data and model"
    without = findings.paper_claims(["dinov2-b14"], "paper-published", paper_setup=True)
    assert not without["testable"].iloc[-1] and without["why"].iloc[-1] == "biomedclip did not run"


def random_contrast(rng, model: str, n: int, n_cases: int | None = None) -> dict:
    """A random row of levels.level_contrast."""
    region, label = rng.uniform(0.4, 1.0), rng.uniform(0.1, 0.6)
    rc, lc = rng.uniform(0.1, 0.4), rng.uniform(0.0, 0.15)
    rk, lk = (region - rc) / (1 - rc), (label - lc) / (1 - lc)
    diff, low, high = random_bounds(rng, rk - lk)
    return {"model": model, "N": n, "region": region, "region chance": rc, "region excess": region - rc,
            "region corrected": rk, "label": label, "label chance": lc, "label excess": label - lc,
            "label corrected": lk, "difference": diff, "low": low,
            "high": high, "p_value": rng.random() * 0.1, "p_holm": float(rng.choice([rng.random() * 0.1, np.nan])),
            "n_queries": int(rng.integers(1, 90)),
            "n_cases": int(rng.choice([2, 48])) if n_cases is None else n_cases}  # fmt: skip


@pytest.mark.parametrize("seed", range(100))
def test_contrast_sentence_agrees_with_its_row(seed):
    rng = np.random.default_rng(seed)
    row = random_contrast(rng, "enc", int(rng.choice([1, 10])))
    text = findings.contrast_sentence(row)
    text = interval_back(text, row["n_cases"], row["low"], row["high"], diff=True, estimate=row["difference"])
    m = re.fullmatch(
        rf"enc: micro P@(\d+) is ({NUM}) against ({NUM}) by chance at the region level and ({NUM}) against ({NUM}) "
        rf"at the label level; chance-corrected \(the mean over queries of each query's \(P - chance\) / \(1 - chance\), "
        rf"1 = perfect, 0 = chance\) ({NUM}) and ({NUM}); paired difference ({NUM}) \(95 % CI ({NUM}) to ({NUM}){ZERO}; ({P})( \(Holm-adjusted over the models\))?; (\d+) "
        rf"quer(?:y|ies), (\d+) cases?\): (.*)\.",
        text,
    )
    assert m, text
    assert int(m.group(1)) == row["N"]
    assert m.group(2, 3, 4, 5) == tuple(
        r3(row[c]) for c in ("region", "region chance", "label", "label chance")
    )
    assert m.group(6, 7) == (r3(row["region corrected"]), r3(row["label corrected"]))
    assert m.group(8, 9, 10) == (s3(row["difference"]), s3(row["low"]), s3(row["high"]))
    check_zero_note(row["low"], row["high"], m.group(11))
    holm = not np.isnan(row["p_holm"])
    p = row["p_holm"] if holm else row["p_value"]
    want = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    assert m.group(12) == ("p < 0.05" if p < 0.05 and want == "p = 0.050" else want)
    assert bool(m.group(13)) == holm
    assert (int(m.group(14)), int(m.group(15))) == (row["n_queries"], row["n_cases"])
    significant = not (holm and row["p_holm"] >= 0.05)
    verdict = m.group(16)
    if row["n_cases"] < findings.MIN_CASES:
        assert verdict.startswith("too few cases")
    elif row["low"] > 1e-9 and significant:
        assert (
            verdict
            == "the region is retrieved closer to perfect, relative to chance, than the full label (finding)"
        )
    elif row["high"] < -1e-9 and significant:
        assert (
            verdict
            == "the full label (finding) is retrieved closer to perfect, relative to chance, than the region"
        )
    else:
        assert verdict.startswith("their chance-corrected values are not distinguishable")
        excludes = row["low"] > 1e-9 or row["high"] < -1e-9
        assert verdict.endswith("does not reach 0.05)") == excludes


def random_pairs(rng, models, other, refs, n_cases):
    rows = []
    for m in models:
        for ref in refs:
            if m == ref:
                continue
            diff = rng.normal(0, 0.1)
            rows.append(
                {"model": m, other: ref, "average": "micro", "N": 1, "difference": diff,
                 "low": diff - rng.exponential(0.05), "high": diff + rng.exponential(0.05),
                 "p_value": rng.random(), "p_holm": rng.random(), "n_cases": n_cases}
            )  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(60))
def test_claim_verdicts_follow_the_intervals(seed):
    rng = np.random.default_rng(seed)
    n_cases = int(rng.choice([3, 20]))
    encoders = ["biomedclip", "enc-a"] if seed % 2 else ["enc-a", "enc-b"]
    models = encoders + ["raw-pixels", "random-vit"]
    config = "paper" if seed % 3 == 0 else "radmini"
    table = pd.DataFrame(
        [{"model": m, "average": "micro", "N": n, "estimate": e, "low": e - 0.05, "high": e + 0.05,
          "chance": 0.1, "n_cases": n_cases}
         for m in models for n, e in zip((1, 3, 5, 10), rng.uniform(0.5, 0.65, 4), strict=True)]
    )  # fmt: skip
    best_model = str(rng.choice(models))
    table.attrs["best"] = best_model
    best = random_pairs(rng, models, "best", [best_model], n_cases)
    base = random_pairs(rng, encoders, "baseline", ["raw-pixels", "random-vit"], n_cases)
    lv = pd.DataFrame([random_contrast(rng, m, n, n_cases) for m in models for n in (1, 10)])
    size = pd.DataFrame(
        [{"model": m, "metric": metric, "N": 10, "average": "micro", "index_cases": c, "estimate": v,
          "low": v - 0.05, "high": v + 0.05, "chance": ch, "n_cases": n_cases}
         for m in models for metric in ("plain P@N", "hit@N")
         for c, v, ch in zip((4.0, 10.0, 20.0), np.sort(rng.uniform(0.2, 0.4, 3)),
                             np.sort(rng.uniform(0.0, 0.15, 3)), strict=True)]
    )  # fmt: skip
    claims = findings.paper_claims(
        models,
        config,
        regions_with_several_labels=int(rng.integers(0, 2)),
        index_size_ran=bool(seed % 4),
        paper_setup=config == "paper",
    )
    got = findings.claim_verdicts(
        claims, table, best=best, baselines=base, levels=lv, index_size=size
    ).set_index("claim")
    assert list(got.index) == list(claims["claim"])
    for _, claim in claims.iterrows():
        verdict = got.loc[claim["claim"], "verdict"]
        if not claim["testable"]:
            assert verdict == findings.UNTESTABLE
            continue
        assert verdict != findings.UNTESTABLE
        key = dict((c, k) for k, c in findings.PAPER_CLAIMS)[claim["claim"]]
        few = n_cases < findings.MIN_CASES
        if key == "baselines":
            significant = base["p_holm"] < 0.05  # a pair counts only with its Holm-adjusted p below 0.05
            above, below = ((base["low"] > 0) & significant).sum(), ((base["high"] < 0) & significant).sum()
            want = (
                findings.NOT_SHOWN if few
                else findings.HOLDS if above == len(base)
                else findings.PARTLY if above
                else findings.FAILS if below
                else findings.NOT_SHOWN
            )  # fmt: skip
            assert verdict == want, got.loc[claim["claim"], "evidence"]
            if not few:  # the evidence splits the count by baseline
                evidence = got.loc[claim["claim"], "evidence"]
                for ref, name in (
                    ("raw-pixels", "the raw-pixel baseline"),
                    ("random-vit", "the random-ViT baseline"),
                ):
                    mine = (base["baseline"] == ref) & (base["low"] > 0) & significant
                    assert (
                        f"against {name} {int(mine.sum())} of {int((base['baseline'] == ref).sum())}"
                        in evidence
                    )
        elif key == "anatomy":
            # the rule and the numbers of the contrast sentence: paired CI and Holm-adjusted p
            at1 = lv[lv["N"] == 1]
            ok = at1["p_holm"].isna() | (at1["p_holm"] < 0.05)
            higher = at1["model"][(at1["low"] > 1e-9) & ok].tolist()
            lower = at1["model"][(at1["high"] < -1e-9) & ok].tolist()
            if few:
                assert verdict == findings.NOT_SHOWN
            else:
                want = (
                    findings.HOLDS if len(higher) == len(models) else findings.PARTLY if higher
                    else findings.FAILS if lower else findings.NOT_SHOWN
                )  # fmt: skip
                assert verdict == want
                evidence = got.loc[claim["claim"], "evidence"]
                named = f" ({', '.join(higher)})" if higher else ""
                assert (
                    f"higher at the region level for {len(higher)} of {len(models)} models{named}, "
                    in evidence
                )
                assert f"lower for {len(lower)}" + (f" ({', '.join(lower)})" if lower else "") in evidence
                floors = [m for m in higher if m in ("raw-pixels", "random-vit")]
                assert (f"the baselines show it too ({', '.join(floors)})" in evidence) == bool(floors)
                assert "the sign of the gap is tested, not its size ('far')" in evidence
                for _, r in at1.iterrows():  # the sentence of notebook 6 says the same for every model
                    sentence = findings.contrast_sentence(r)
                    assert ("region is retrieved closer to perfect" in sentence) == (r["model"] in higher)
                    assert ("(finding) is retrieved closer to perfect" in sentence) == (r["model"] in lower)
        elif key == "image_text":
            if few:
                assert verdict == findings.NOT_SHOWN
            elif best_model == "biomedclip":
                lower = (best["high"] < 0) & (best["p_holm"] < 0.05)
                assert verdict == (findings.HOLDS if lower.all() else
                                   findings.PARTLY if lower.any() else findings.NOT_SHOWN)  # fmt: skip
            else:
                rival = best[best["model"] == "biomedclip"]
                lower = (rival["high"] < 0) & (rival["p_holm"] < 0.05)
                assert verdict == (findings.FAILS if lower.all() else findings.NOT_SHOWN)
        elif key == "index_size":
            plain = size[size["metric"] == "plain P@N"]
            changed = 0
            for _, g in plain.groupby("model"):
                a, b = g[g["index_cases"] == 4.0].iloc[0], g[g["index_cases"] == 20.0].iloc[0]
                # above chance: both bands shifted by their own chance value
                changed += int(
                    b["low"] - b["chance"] > a["high"] - a["chance"]
                    or b["high"] - b["chance"] < a["low"] - a["chance"]
                )
            want = (
                findings.NOT_SHOWN if few or not changed
                else findings.HOLDS if changed == len(models) else findings.PARTLY
            )  # fmt: skip
            assert verdict == want
            if not few:
                evidence = got.loc[claim["claim"], "evidence"]
                assert f"for {changed} of {len(models)} models" in evidence
                listed = re.search(r"of \d+ models(?: \(([^)]*)\))?(?:;| \(notebook 4\)$)", evidence)
                named = set(listed.group(1).split(", ")) if listed.group(1) else set()
                assert len(named) == changed
                for model, g in size.groupby("model"):  # notebook 4's sentence says the same, model by model
                    moves = any(
                        w in findings.index_size_sentence(g, model) for w in (": it rises", ": it falls")
                    )
                    assert moves == (model in named)
                hits = size[size["metric"] == "hit@N"]
                if not hits.empty:  # hit@10 is reported beside the verdict, by the same rule, and not counted
                    moved = [
                        m for m, g in hits.groupby("model", sort=False) if findings.index_size_change(g)[2]
                    ]
                    assert (
                        f"; by micro hit@10, shown beside it and not counted in the verdict, for {len(moved)} of "
                        in (evidence)
                    )
        elif key == "numbers":
            ours = table[table["model"] == "biomedclip"].set_index("N")
            inside = sum(
                ours.loc[n, "low"] <= v <= ours.loc[n, "high"]
                for n, v in zip((1, 3, 5, 10), (0.594, 0.590, 0.588, 0.583), strict=True)
            )
            assert f"at {inside} of 4 N" in got.loc[claim["claim"], "evidence"]
    text = findings.findings_markdown(config, table, best, base, got.reset_index())
    assert text.startswith(f"# Findings ({config})\n\n*Terms.* **P@N** is the paper's modified precision")
    for _, r in got.reset_index().iterrows():
        assert f"- {r['claim']} ({r['evidence']})" in text
        assert f"**{r['verdict'].capitalize()}:**" in text
    noted = findings.findings_markdown(
        config, table, best, base, got.reset_index(), method=["Embeddings: x."]
    )
    assert f"{findings.TERMS}\n\nEmbeddings: x.\n\n## What the tables show" in noted


# ---- notebooks 01, 02, 05, 07 ---------------------------------------------------------------------------------
def _ci(rng, centre):
    return centre - rng.exponential(0.05), centre + rng.exponential(0.05)


@pytest.mark.parametrize("seed", range(50))
def test_data_sentences_count_the_thin_classes(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    test_cases = rng.integers(0, 9, n)
    by_label = pd.DataFrame(
        {"label": [f"M/r/c{i}" for i in range(n)], "test images": test_cases * 2, "test cases": test_cases}
    )
    audit = pd.DataFrame(
        {"check": ["patients in more than one split", "near"], "split pair": ["any", "train-test"],
         "count": rng.integers(0, 3, 2)}
    )  # fmt: skip
    text = findings.data_sentences(by_label, audit, test_cases=int(test_cases.sum()))
    present = test_cases > 0
    thin = present & (test_cases < findings.MIN_CASES)
    assert f"{int(thin.sum())} of the {int(present.sum())} test classes have fewer than 5" in text[0]
    for i in range(n):
        assert (f"M/r/c{i} (" in text[0]) == bool(thin[i])
    assert (f"{int((~present).sum())} class(es) have no test image" in " ".join(text)) == bool(
        (~present).any()
    )
    assert text[-2].startswith(f"Leakage check, patients in more than one split: {audit['count'][0]} found")
    assert f"(train-test): {audit['count'][1]} found" in text[-1]


def test_data_sentences_count_many_thin_classes_by_their_cases():
    test_cases = np.array([1] * 31 + [2] * 29 + [4] * 15 + [9] * 86)
    by_label = pd.DataFrame(
        {
            "label": [f"M/r/c{i:03d}" for i in range(161)],
            "test images": test_cases * 1000,
            "test cases": test_cases,
        }
    )
    audit = pd.DataFrame({"check": ["near"], "split pair": ["any"], "count": [0]})
    text = findings.data_sentences(by_label, audit, test_cases=int(test_cases.sum()))[0]
    assert text.startswith(
        f"The test split holds {int(test_cases.sum()) * 1000:,} images of 161 classes from "
    )
    assert (
        "75 of the 161 test classes have fewer than 5 test cases: 31 with 1 case, 29 with 2 cases, 15 with 4 "
        in (text)
    )
    assert "M/r/c" not in text


@pytest.mark.parametrize("seed", range(100))
def test_separation_sentence_agrees_with_its_table(seed):
    rng = np.random.default_rng(seed)
    same, diff = rng.random(), rng.random()
    lo, hi = _ci(rng, same - diff)
    n = int(rng.integers(1, 40))
    table = pd.DataFrame(
        {"pair": ["same label", "different label", "difference"], "mean": [same, diff, same - diff],
         "ci_low": [same - 0.1, diff - 0.1, lo], "ci_high": [same + 0.1, diff + 0.1, hi],
         "label-blind": [(same + diff) / 2, (same + diff) / 2, 0.0], "images": 3 * n, "cases": n}
    )  # fmt: skip
    text = findings.separation_sentence(table, "m")
    text = interval_back(text, n, lo, hi, diff=True, estimate=same - diff)
    assert (
        f"against 0 for an embedding blind to the label (whose same- and different-label means would both be the mean similarity to any image of another case, {r3((same + diff) / 2)})"
        in text
    )
    assert f"is {r3(same)}," in text and f"other cases {r3(diff)};" in text
    m = re.search(rf"difference ({NUM}) \(95 % CI ({NUM}) to ({NUM}){ZERO}; (\d+) images, (\d+) case", text)
    assert m, text
    assert m.group(1, 2, 3) == (s3(same - diff), s3(lo), s3(hi))
    check_zero_note(lo, hi, m.group(4))
    assert (int(m.group(5)), int(m.group(6))) == (3 * n, n)
    if n < findings.MIN_CASES:
        assert "too few cases" in text and "closer" not in text
    elif lo > 0:
        assert "same-label images of other cases are closer" in text
    elif hi < 0:
        assert "different-label images of other cases are closer" in text
    else:
        assert "not distinguishable" in text and "closer" not in text


def _purity_table(rng, models):
    rows = []
    for m in models:
        n = int(rng.integers(1, 30))
        for level in ("modality", "region", "label"):
            p = rng.random()
            lo, hi = _ci(rng, p)
            rows.append({"model": m, "level": level, "classes": 3, "k": 10, "purity": p, "ci_low": lo,
                         "ci_high": hi, "chance": rng.random(), "queries": 3 * n, "cases": n,
                         "silhouette": rng.uniform(-1, 1)})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(100))
def test_purity_sentences_agree_with_their_table(seed):
    rng = np.random.default_rng(seed)
    table = _purity_table(rng, ["a", "b", "c"])
    text = findings.purity_sentences(table)
    assert len(text) == 3
    for sentence, (model, part) in zip(text, table.groupby("model", sort=False), strict=True):
        p = part.set_index("level")
        n = int(p["cases"].min())
        assert sentence.startswith(f"{model} (kNN purity, k = 10, same-case neighbours excluded; {n} case")
        for level, r in p.iterrows():
            if n < findings.MIN_CASES:
                assert f"{level} {r3(r['purity'])} ({NO_CI}) against" in sentence
                sentence = sentence.replace(
                    NO_CI, findings.interval(r["ci_low"], r["ci_high"], estimate=r["purity"]), 1
                )
            m = re.search(
                rf"{level} ({NUM}) \(95 % CI ({NUM}) to ({NUM})\) against ({NUM}) by chance: ([^;.]+)",
                sentence,
            )
            assert m, sentence
            assert m.groups()[:4] == (r3(r["purity"]), r3(r["ci_low"]), r3(r["ci_high"]), r3(r["chance"]))
            verdict = m.group(5)
            if n < findings.MIN_CASES:
                assert verdict.startswith("too few cases")
            elif r["ci_low"] > r["chance"]:
                assert verdict == "above chance"
            elif r["ci_high"] < r["chance"]:
                assert verdict == "below chance"
            else:
                assert verdict == "not distinguishable from chance"
        assert (
            "falls from modality" not in sentence and "rises from modality" not in sentence
        )  # nested levels
        assert "Purity cannot rise from modality to label" in sentence
        assert "highest" not in sentence and "not ranked" in sentence  # no interval: no ranking of the levels
        for level, v in p["silhouette"].items():
            assert f"{level} {r3(v)}" in sentence


@pytest.mark.parametrize("seed", range(100))
def test_classification_sentences_agree_with_their_table(seed):
    rng = np.random.default_rng(seed)
    models = ["raw-pixels", "enc-a", "enc-b", "random-vit"][: int(rng.integers(2, 5))]
    n = int(rng.integers(3, 30))
    rows, comps = [], []
    for head in ("kNN", "linear probe"):
        for m in models:
            f = rng.random()
            lo, hi = _ci(rng, f)
            rows.append({"model": m, "head": head, "rule": "val", "f1_macro": f, "f1_macro lo": lo,
                         "f1_macro hi": hi, "f1_macro chance": rng.random() / 3, "cases": n, "queries": 2 * n})  # fmt: skip
            if m not in ("raw-pixels", "random-vit"):
                for base in [b for b in ("raw-pixels", "random-vit") if b in models]:
                    d = rng.normal() * 0.2
                    dlo, dhi = d - rng.random() * 0.3, d + rng.random() * 0.3
                    comps.append({"model": m, "baseline": base, "head": head, "metric": "f1_macro",
                                  "difference": d, "low": dlo, "high": dhi, "p_value": rng.random() / 10,
                                  "p_holm": rng.random() / 5, "n_queries": 2 * n, "n_cases": n})  # fmt: skip
    wide = pd.DataFrame(rows)
    comparisons = pd.DataFrame(comps)
    text = findings.classification_sentences(wide, comparisons=comparisons)
    joined = " ".join(text)
    orders = {}
    for head, part in wide.groupby("head", sort=False):
        t = part.sort_values("f1_macro", ascending=False)
        best, nxt = t.iloc[0], t.iloc[1]
        line = next(s for s in text if s.startswith(f"Highest macro-F1 with the {head}: "))
        shown = [r3(v) for v in t["f1_macro"]]
        groups = [sorted(t["model"][[v == x for v in shown]]) for x in dict.fromkeys(shown)]
        orders[head] = groups
        if len(groups[0]) > 1:  # tied as shown: named together, not ranked
            assert f"read {shown[0]} ({', '.join(t['model'][: len(groups[0])])}; {n} cases)" in line
            assert line.endswith("the table does not rank them (equal to 3 decimals).")
            continue
        if n < findings.MIN_CASES:  # no interval for the best or the next
            assert line.count(NO_CI) == 2
            for r in (best, nxt):
                line = line.replace(
                    NO_CI, findings.interval(r["f1_macro lo"], r["f1_macro hi"], estimate=r["f1_macro"]), 1
                )
        assert (
            f": {best['model']}, {r3(best['f1_macro'])} (95 % CI {r3(best['f1_macro lo'])} to {r3(best['f1_macro hi'])}; {n} cases) "
            f"against {r3(best['f1_macro chance'])} by chance" in line
        )
        assert f"next {nxt['model']}, {r3(nxt['f1_macro'])}" in line
        if n < findings.MIN_CASES:
            assert "too few cases" in line
        elif best["f1_macro lo"] > nxt["f1_macro hi"]:
            assert line.endswith("the intervals do not overlap (an unpaired check).")
        else:
            assert "the intervals overlap" in line
        for _, c in comparisons[comparisons["head"] == head].iterrows() if len(comparisons) else []:
            ref = findings.BASELINE_NAMES[c["baseline"]]
            sentence = next(
                s for s in text if s.startswith(f"{c['model']} ") and f" {ref} in macro-F1 ({head})" in s
            )
            assert f"difference {findings.signed(c['difference'])}" in sentence
            assert f"{n} cases" in sentence and "Holm-adjusted" in sentence
            if n < findings.MIN_CASES:
                assert "too few cases" in sentence
            elif c["low"] > 0 and c["p_holm"] < 0.05:
                assert "scores higher than" in sentence
            elif c["high"] < 0 and c["p_holm"] < 0.05:
                assert "scores lower than" in sentence
            else:
                assert "is not distinguishable from" in sentence
    assert "entirely above" not in joined  # no interval-overlap verdict against the baselines
    if len(orders["kNN"]) == 1 and len(orders["linear probe"]) == 1:
        assert "neither head ranks the models" in joined
    else:
        agree = orders["kNN"] == orders["linear probe"]
        assert ("= joins equal values) agree (" in joined) == agree
        assert ("= joins equal values) differ (" in joined) == (not agree)
        if not agree:  # opposite orders count only where the intervals are apart under both heads
            k, p = (wide[wide["head"] == h].set_index("model") for h in ("kNN", "linear probe"))
            apart = [(x, y) for x in k.index for y in k.index
                     if r3(k.at[x, "f1_macro"]) > r3(k.at[y, "f1_macro"]) and r3(p.at[y, "f1_macro"]) > r3(p.at[x, "f1_macro"])
                     and k.at[x, "f1_macro lo"] > k.at[y, "f1_macro hi"] and p.at[y, "f1_macro lo"] > p.at[x, "f1_macro hi"]]  # fmt: skip
            if apart:
                assert (
                    f"the heads rank {', '.join(f'{x} and {y}' for x, y in apart)} in opposite orders"
                    in joined
                )
            else:
                assert "no difference in ranking between the heads is shown" in joined


def _heads(knn: dict[str, float], probe: dict[str, float], n: int = 200) -> pd.DataFrame:
    rows = [{"model": m, "head": head, "f1_macro": v, "f1_macro lo": v - 0.01, "f1_macro hi": min(v + 0.01, 1),
             "f1_macro chance": 0.006, "cases": n}
            for head, vals in (("kNN", knn), ("linear probe", probe)) for m, v in vals.items()]  # fmt: skip
    return pd.DataFrame(rows)


def test_classification_sentences_name_values_that_tie_as_shown_instead_of_ranking_them():
    # every kNN value reads 1.000 (one is 0.99996); the probe's top two tie, the third is below
    wide = _heads({"a": 1.0, "b": 0.99996, "c": 1.0}, {"a": 1.0, "b": 0.9649, "c": 0.99999})
    text = findings.classification_sentences(wide)
    knn, probe, order = text
    assert knn == (
        "Highest macro-F1 with the kNN: all 3 models read 1.000 (a, c, b; 200 cases) against 0.006 by chance; "
        "the table does not rank them (equal to 3 decimals)."
    )
    assert probe.startswith(
        "Highest macro-F1 with the linear probe: 2 of 3 models read 1.000 (a, c; 200 cases)"
    )
    assert "next" not in knn + probe
    assert "(kNN: all 3 at 1.000; linear probe: a = c (1.000) > b (0.965))" in order
    assert "differ" in order and "no difference in ranking between the heads is shown" in order  # overlap
    apart = findings.classification_sentences(_heads({"a": 0.9, "b": 0.5}, {"a": 0.5, "b": 0.9}))
    assert (
        "the heads rank a and b in opposite orders with intervals that do not overlap under either head"
        in apart[-1]
    )
    # equal orders once ties are grouped: they agree, whatever the hidden decimals
    same = findings.classification_sentences(
        _heads({"a": 0.9, "b": 0.8001, "c": 0.8}, {"a": 0.91, "b": 0.8, "c": 0.80004})
    )
    assert "agree (kNN: a (0.900) > b = c (0.800); linear probe: a (0.910) > c = b (0.800))" in same[-1]
    # every value tied under both heads: no ranking at all
    flat = findings.classification_sentences(_heads({"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 0.5}))
    assert flat[-1] == (
        "Every model reads the same macro-F1 under each head (kNN 1.000, linear probe 0.500): neither head ranks "
        "the models."
    )
    assert findings.shown_order(wide[wide["head"] == "linear probe"], "f1_macro") == [
        (["a", "c"], "1.000"),
        (["b"], "0.965"),
    ]


def test_knn_k1_sentence_appears_only_when_k_1_ran():
    wide = pd.DataFrame({"model": ["a", "b", "a"], "head": ["kNN", "kNN", "linear probe"],
                         "accuracy": [0.61234, 0.5, 0.7]})  # fmt: skip
    assert findings.knn_k1_sentence({"a": 3, "b": 7}, wide) is None
    one = findings.knn_k1_sentence({"a": 1, "b": 7}, wide)
    assert "selected for a)" in one and "a 0.612" in one and "b 0.500" not in one and "P@1" in one
    both = findings.knn_k1_sentence({"a": 1, "b": 1}, wide)
    assert "selected for every model" in both
    assert "ROC-AUC rests on a single threshold" in both


def test_with_one_hot_scores_roc_auc_is_the_mean_of_sensitivity_and_specificity():
    """What knn_k1_sentence says of k = 1, checked on the library's metric."""
    from cbmir.classification import classification_metrics

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    scores = np.eye(3)[pred]
    got = classification_metrics(y, scores).metrics
    onehot, hits = np.eye(3)[y].astype(bool), np.eye(3)[pred].astype(bool)

    def balanced(truth, said):
        return ((said & truth).sum() / truth.sum() + (~said & ~truth).sum() / (~truth).sum()) / 2

    assert got["roc_auc_macro"] == pytest.approx(
        np.mean([balanced(onehot[:, c], hits[:, c]) for c in range(3)])
    )
    assert got["roc_auc_micro"] == pytest.approx(balanced(onehot.ravel(), hits.ravel()))


def test_the_anatomy_verdict_needs_the_paired_contrast():
    claims = findings.paper_claims(["a", "raw-pixels"], "radmini", regions_with_several_labels=2)
    old = pd.DataFrame({"model": "a", "level": ["region", "label"], "N": 1, "micro": 0.5, "micro_lo": 0.4,
                        "micro_hi": 0.6, "chance_micro": 0.1, "n_cases": 9})  # fmt: skip
    table = pd.DataFrame(columns=["model", "average", "N", "estimate", "low", "high", "chance", "n_cases"])
    with pytest.raises(ValueError, match="levels.level_contrast rows"):
        findings.claim_verdicts(claims, table, levels=old)


def test_a_bound_printing_as_zero_says_whether_the_interval_reaches_0():
    row = {"model": "random-vit", "best": "xception-imagenet", "average": "micro", "N": 1, "difference": -0.175,
           "low": -0.394, "high": 1e-17, "p_value": 0.05, "p_holm": 0.108, "n_cases": 48}  # fmt: skip
    text = findings.comparison_sentence(row, "best")
    assert "(95 % CI -0.394 to +0.000, i.e. it reaches 0; p = 0.108" in text
    assert "not distinguishable" in text  # float noise above 0 does not exclude 0
    text = findings.comparison_sentence(row | {"high": -3e-4, "p_holm": 0.01}, "best")
    assert "(95 % CI -0.394 to +0.000, i.e. it stops just short of 0 (at -3.0e-04); p = 0.010" in text
    assert "scores lower than" in text
    assert findings.interval(0.1, 0.2, diff=True) == "95 % CI +0.100 to +0.200"
    assert findings.interval(0.0, 0.2) == "95 % CI 0.000 to 0.200"  # not a difference: no note


def test_p_values_never_round_across_the_level():
    assert findings.pval(0.04995) == "p < 0.05"  # would read 0.050 beside a claimed difference
    assert findings.pval(0.0504) == "p = 0.050" and findings.pval(0.05) == "p = 0.050"
    assert findings.pval(0.0083) == "p = 0.008" and findings.pval(0.0004) == "p < 0.001"


def test_a_sentence_says_when_its_interval_does_not_contain_the_estimate():
    outside = findings.chance_sentence("sam-vit-b", "macro P@1", 0.352, 0.410, 0.484, 0.006, 40)
    assert "95 % CI 0.410 to 0.484, which does not contain the estimate" in outside
    inside = findings.chance_sentence("sam-vit-b", "macro P@1", 0.45, 0.410, 0.484, 0.006, 40)
    assert "does not contain" not in inside
    assert "does not contain" not in findings.interval(0.1, 0.3)  # no estimate given: nothing to judge


def test_a_zero_width_interval_says_it_shows_no_spread():
    flat = findings.chance_sentence("xception", "micro P@1", 1.0, 1.0, 1.0, 0.05, 13)
    assert "95 % CI 1.000 to 1.000 (zero width: every case gives the same value" in flat
    assert "zero width" not in findings.chance_sentence("xception", "micro P@1", 0.9, 0.8, 1.0, 0.05, 13)


def test_a_p_value_at_the_bootstrap_floor_reads_as_a_bound():
    row = {"model": "a", "best": "b", "average": "micro", "N": 1, "difference": -0.2, "low": -0.3, "high": -0.1,
           "p_value": 2 / 1001, "p_min": 2 / 1001, "p_holm": 4 / 1001, "n_cases": 48}  # fmt: skip
    assert "; p ≤ 0.004 (Holm-adjusted" in findings.comparison_sentence(row, "best")
    above = row | {"p_value": 4 / 1001, "p_holm": 8 / 1001}  # one resample crossed 0: an ordinary p-value
    assert "; p = 0.008 (Holm-adjusted" in findings.comparison_sentence(above, "best")
    no_floor = {k: v for k, v in row.items() if k != "p_min"}  # tables without p_min read as before
    assert "; p = 0.004 (Holm-adjusted" in findings.comparison_sentence(no_floor, "best")


def test_a_list_quoting_a_p_value_at_its_floor_explains_it():
    assert findings.as_markdown(["a: p = 0.030.", "b."]) == "- a: p = 0.030.\n- b."
    text = findings.as_markdown(["a: p ≤ 0.004 (Holm-adjusted).", "b."])
    assert text.startswith("- a: p ≤ 0.004 (Holm-adjusted).\n- b.\n\n") and text.endswith(
        findings.P_FLOOR_SENTENCE
    )


def test_large_index_counts_are_written_with_separators():
    assert findings._index_count(1359988) == "1,359,988 index cases"
    assert findings._index_count(12345.25) == "12,345.2 index cases (mean over repeats)"


def test_many_regions_are_counted_per_model_not_listed():
    rows = []
    for model in ("a", "b"):
        for i, region in enumerate(["all regions", *[f"R{j:02d}" for j in range(6)]]):
            lo = -0.05 if i == 2 else 0.1 + 0.01 * i  # R01 touches 0: not distinguishable
            rows.append(
                {
                    "model": model, "region": region, "N": 10, "share": 0.6 + 0.01 * i, "chance": 0.3,
                    "difference": 0.3 + 0.01 * i if i != 2 else 0.01, "difference_lo": lo,
                    "difference_hi": 0.5, "n_queries": 1500, "n_cases": 3 if i == 6 else 40,
                }
            )  # fmt: skip
    part = pd.DataFrame(rows)
    text = findings.conditional_sentences(part)
    assert len(text) == 4  # per model: the pooled row, then one count sentence
    assert text[0] == findings.conditional_sentence(part.iloc[0], "a")
    assert "1,500 queries, 40 cases" in text[0]
    assert text[1].startswith(
        "a, region by region among anatomy-correct neighbours in the first 10 (6 regions;"
    )
    assert (
        "the finding matches above chance in 4, not distinguishable from chance in 1, too few cases in 1"
        in text[1]
    )
    assert (
        "the smallest difference is in R01: 0.620 against 0.300 by chance, +0.010 (95 % CI -0.050 to +0.500"
        in (text[1])
    )
    few = findings.conditional_sentences(part[part["region"].isin(["all regions", "R00", "R01"])])
    assert len(few) == 6 and few[1] == findings.conditional_sentence(
        part.iloc[1], "a"
    )  # few regions: in full


def test_a_region_is_above_chance_only_when_its_holm_adjusted_p_agrees():
    row = {"model": "a", "region": "MR/brain", "N": 10, "share": 0.4, "chance": 0.3, "difference": 0.1,
           "difference_lo": 0.02, "difference_hi": 0.2, "p_value": 0.01, "p_min": 2 / 1001, "p_holm": 0.03,
           "n_queries": 40, "n_cases": 36}  # fmt: skip
    assert findings.conditional_verdict(row) == "above chance"
    text = findings.conditional_sentence(row, "a")
    assert (
        "p = 0.030 (Holm-adjusted over every model's per-region rows with at least 5 cases); 40 queries, 36 cases): above chance."
        in text
    )
    adjusted = row | {"p_holm": 0.08}
    assert findings.conditional_verdict(adjusted) == "not distinguishable from chance"
    assert findings.conditional_sentence(adjusted, "a").endswith(
        "not distinguishable from chance (the unadjusted 95 % CI excludes 0, but the Holm-adjusted p does not "
        "reach 0.05)."
    )
    pooled = row | {"region": "all regions"}
    assert "(Holm-adjusted over the models' rows for all regions)" in findings.conditional_sentence(
        pooled, "a"
    )
    few = row | {"n_cases": 3, "p_holm": np.nan}  # not tested: no p quoted, no verdict
    assert "Holm" not in findings.conditional_sentence(
        few, "a"
    ) and "too few cases" in findings.conditional_verdict(few)


def test_a_baseline_above_chance_among_anatomy_correct_neighbours_is_pointed_out():
    def row(model, lo):
        return {"model": model, "region": "all regions", "N": 10, "share": 0.47, "chance": 0.37, "difference": 0.1,
                "difference_lo": lo, "difference_hi": 0.15, "p_value": 0.002, "p_min": 0.002, "p_holm": 0.004,
                "n_queries": 65, "n_cases": 39}  # fmt: skip

    above = findings.conditional_sentences(pd.DataFrame([row("raw-pixels", 0.06), row("a", 0.05)]))
    assert above[-1].startswith("Over all regions, the raw-pixel baseline (+0.100) is above chance too")
    level = findings.conditional_sentences(pd.DataFrame([row("raw-pixels", -0.01), row("a", 0.05)]))
    assert len(level) == 2 and not any("above chance too" in t for t in level)


def test_nothing_to_compare_says_which_side_is_missing():
    from cbmir.analyses.findings import nothing_to_compare

    none = nothing_to_compare(["sam-vit-b", "biomedclip"])
    assert "None of the 2 models of this run is a baseline (raw-pixels, random-vit)" in none
    only = nothing_to_compare(["raw-pixels"], ["raw-pixels", "random-vit"])
    assert only.startswith("Only baselines ran (raw-pixels)")


def _p1_table(values: dict[str, float], n_cases: int = 500) -> pd.DataFrame:
    table = pd.DataFrame([{"model": m, "average": "micro", "N": 1, "estimate": v, "low": v - 0.002,
                           "high": v + 0.002, "chance": 0.07, "n_cases": n_cases} for m, v in values.items()])  # fmt: skip
    table.attrs["best"] = max(values, key=values.get)
    return table


def _versus(model: str, best: str, low: float, high: float, p_holm: float = 1.0) -> dict:
    return {"model": model, "best": best, "average": "micro", "N": 1, "difference": (low + high) / 2,
            "low": low, "high": high, "p_value": p_holm, "p_holm": p_holm, "n_cases": 500}  # fmt: skip


def test_the_best_model_is_not_named_alone_when_others_read_the_same_value():
    table = _p1_table({"dinov2-b14": 0.86204, "clip-vit-l14": 0.86181, "sam-vit-b": 0.8611})
    best = pd.DataFrame([_versus("clip-vit-l14", "dinov2-b14", -0.003, 0.002),
                         _versus("sam-vit-b", "dinov2-b14", -0.003, 0.002)])  # fmt: skip
    first = findings.summary_sentences(table, best=best)[0]
    assert first.startswith(
        "Highest micro P@1 (the ranking rule): dinov2-b14, 0.862 (95 % CI 0.860 to 0.864; 500 cases), and "
        "clip-vit-l14 reads the same 0.862: they share rank 1, and it is the reference of the paired comparisons "
        "only by its unrounded value (then macro P@1); none of the 2 other models"
    )
    claims = findings.paper_claims(list(table["model"]), "radmini")
    got = findings.claim_verdicts(claims, table, best=best).set_index("claim")
    image_text = got.loc[findings.PAPER_CLAIMS[0][1]]
    assert image_text["verdict"] == findings.NOT_SHOWN
    assert image_text["evidence"].startswith(
        "in micro P@1 the reference (highest) model is dinov2-b14 (not an image-text model), sharing rank 1 with "
        "clip-vit-l14 (equal to 3 decimals); 0 of 1 image-text models score lower than it"
    )
    assert "the best model is" not in image_text["evidence"]
    # nothing reads the same: no tie is named; an image-text leader that every model trails holds the claim
    table = _p1_table({"biomedclip": 0.7, "enc-a": 0.6})
    alone = findings.summary_sentences(table)[0]
    assert "reads the same" not in alone and "read the same" not in alone
    best = pd.DataFrame([_versus("enc-a", "biomedclip", -0.12, -0.08, p_holm=0.002)])
    got = findings.claim_verdicts(findings.paper_claims(["biomedclip", "enc-a"], "radmini"), table, best=best)
    assert got.loc[0, "verdict"] == findings.HOLDS
    assert got.loc[0, "evidence"].startswith(
        "in micro P@1 the reference (highest) model is biomedclip (an image-text model); 1 of 1"
    )
    # biomedclip, the claim's model, is quoted against the reference when it is not the reference itself
    table = _p1_table({"enc-a": 0.7, "biomedclip": 0.6})
    best = pd.DataFrame([_versus("biomedclip", "enc-a", -0.12, -0.08, p_holm=0.002)])
    got = findings.claim_verdicts(findings.paper_claims(["biomedclip", "enc-a"], "radmini"), table, best=best)
    want = "; biomedclip against it: -0.100 (95 % CI -0.120 to -0.080; p = 0.002 (Holm-adjusted over the comparisons"
    assert want in got.loc[0, "evidence"] and got.loc[0, "verdict"] == findings.FAILS


def test_best_worst_sentence_says_whether_the_ends_of_a_class_ranking_differ():
    def rows(values, los, his, cases):
        return pd.DataFrame({"class": [f"c{v}" for v in values], "P@1": values, "P@1_lo": los, "P@1_hi": his,
                             "n_cases": cases})  # fmt: skip

    best = rows([0.9, 0.8], [0.7, 0.6], [1.0, 0.95], [10, 10])
    apart = findings.best_worst_sentence(best, rows([0.1, 0.3], [0.0, 0.1], [0.2, 0.5], [10, 10]), "P@1")
    assert apart.startswith(
        "Among the listed classes with at least 5 cases, every highest one lies above every lowest one"
    )
    assert (
        "c0.8 0.800 (95 % CI 0.600 to 0.950) at the top, c0.3 0.300 (95 % CI 0.100 to 0.500) at the bottom"
        in apart
    )
    close = findings.best_worst_sentence(best, rows([0.5], [0.3], [0.65], [10]), "P@1")
    assert close.startswith(
        "Among the listed classes with at least 5 cases, the intervals at the two ends overlap (c0.8"
    )
    assert "not established" in close
    # a bottom class of 3 cases has no interval: it is not compared
    few = findings.best_worst_sentence(best, rows([0.5], [0.3], [0.65], [3]), "P@1")
    assert few.startswith("Too few listed classes with at least 5 cases at one end")


def test_probe_epoch_note_names_the_probes_stopped_by_the_epoch_limit():
    assert findings.probe_epoch_note({"a": 12, "b": 99}, 100) is None
    note = findings.probe_epoch_note({"a": 100, "b": 40, "c": 100}, 100)
    assert note.startswith("2 of 3 probes chose the last allowed epoch (100): a, c.")
