"""cbmir.tables.show: every row and column, no index column, estimate and CI in one cell, long tables folded.

The rendered HTML is parsed back and compared cell by cell with a slow reference formatter written out here.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
import pandas as pd
import pytest
from bs4 import BeautifulSoup
from cbmir.analyses import findings
from cbmir.tables import MISSING, TableError, format_ci, show


def parse(html: str) -> tuple[list[str], list[list[str]], BeautifulSoup]:
    soup = BeautifulSoup(html, "html.parser")
    table = soup.find("table")
    header = [th.get_text() for th in table.find("thead").find_all("th")]
    rows = [[td.get_text() for td in tr.find_all(["td", "th"])] for tr in table.find("tbody").find_all("tr")]
    return header, rows, soup


def reference_number(x: float, digits: int = 3) -> str:
    """Slow and obvious: NaN is a dash, tiny non-zero values are scientific, the rest has `digits` decimals.

    Decimal(x) is the exact binary value, rounded half-to-even like Python's float formatting.
    """
    if math.isnan(x):
        return "—"
    if abs(x) < 1e-12:  # rounding noise (e.g. -4.4e-16) is a zero
        return "0." + "0" * digits
    exact = Decimal(x)
    if x != 0 and abs(exact) < Decimal(5) / Decimal(10) ** (digits + 1):
        exponent = exact.adjusted()  # floor(log10(|x|))
        mantissa = (exact / Decimal(10) ** exponent).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)
        if abs(mantissa) >= 10:
            exponent, mantissa = exponent + 1, (mantissa / 10).quantize(Decimal("0.1"))
        return f"{mantissa}e{exponent:+03d}"
    return str(exact.quantize(Decimal(1) / Decimal(10) ** digits, rounding=ROUND_HALF_EVEN))


def test_every_row_and_column_with_ci_in_one_cell_and_no_index():
    rng = np.random.default_rng(0)
    n = 161  # the paper's number of classes
    est = rng.random(n)
    lo, hi = est - rng.random(n) * 0.1, est + rng.random(n) * 0.1
    df = pd.DataFrame(
        {
            "class": [
                f"CT/region{i % 7}/finding {i} with a rather long name that pandas would cut"
                for i in range(n)
            ],
            "p@1": est,
            "p@1 lo": lo,
            "p@1 hi": hi,
            "n queries": rng.integers(1, 50_000, n),
        }
    )
    df.loc[3, "p@1"] = np.nan
    table = show(df, caption="Per-class precision", collapse_after=25)
    header, rows, soup = parse(table.html)
    assert header == ["class", "p@1", "n queries"]  # bounds merged away, no index column
    assert len(rows) == n
    for i, row in enumerate(rows):
        expected_est = reference_number(df.loc[i, "p@1"])
        assert row == [
            df.loc[i, "class"],
            f"{expected_est} [{reference_number(lo[i])}, {reference_number(hi[i])}]",
            f"{int(df.loc[i, 'n queries']):,}",
        ], i
    assert soup.find("details") is not None and soup.find("summary").get_text().startswith(
        "Per-class precision"
    )
    assert "161 rows" in soup.find("caption").get_text()
    assert "..." not in table.html and "rows ×" not in table.html
    # the frame behind the HTML holds the same text
    assert table.frame.shape == (n, 3)


def test_reference_formatter_agrees_with_the_library_on_random_values():
    from cbmir.tables import format_value

    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            rng.normal(0, 1, 500),
            rng.normal(0, 1e-4, 200),
            [0.0, np.nan, 0.0005, -0.0004, -4.4e-16, 3.8e-13, 1.1e-12],
        ]
    )
    for x in values:
        assert format_value(float(x)) == reference_number(float(x)), x


def test_wide_table_keeps_every_column_and_short_table_is_not_folded():
    df = pd.DataFrame(np.arange(3 * 40).reshape(3, 40) / 7, columns=[f"column {i}" for i in range(40)])
    header, rows, soup = parse(show(df, caption="Wide").html)
    assert header == list(df.columns)
    assert len(rows) == 3 and all(len(r) == 40 for r in rows)
    assert soup.find("details") is None
    assert rows[1][39] == f"{df.iloc[1, 39]:.3f}"


def test_meaningful_index_becomes_the_first_column_and_range_index_is_dropped():
    df = pd.DataFrame({"model": ["a", "b"], "P@1": [0.5, 0.25]})
    assert parse(show(df).html)[0] == ["model", "P@1"]
    assert parse(show(df.set_index("model")).html)[0] == ["model", "P@1"]
    shuffled = df.iloc[
        [1, 0]
    ]  # not a 0..n-1 index, but unnamed and meaningless after a sort: kept on request
    assert parse(show(shuffled, index=False).html)[1] == [["b", "0.250"], ["a", "0.500"]]


def test_interval_cells_are_rounded_never_scientific():
    assert format_ci(0.062, 1.1e-17, 0.16) == "0.062 [0.000, 0.160]"
    assert format_ci(-1e-17, -1.1e-17, 2e-4) == "0.000 [0.000, 0.000]"
    assert format_ci(0.5, -0.0004, 0.6, digits=2) == "0.50 [0.00, 0.60]"
    assert format_ci(0.5, np.nan, np.nan) == "0.500"
    rows = parse(show(pd.DataFrame({"d": [0.062], "d_lo": [1.1e-17], "d_hi": [0.16], "p": [2e-5]})).html)[1]
    assert rows == [["0.062 [0.000, 0.160]", "2.0e-05"]]  # a lone small value keeps its notation


def test_text_intervals_and_explicit_ci_columns():
    df = pd.DataFrame(
        {
            "model": ["m1", "m2"],
            "micro P@1": [0.68852459, 0.5],
            "micro P@1 CI": ["[0.557, 0.803]", np.nan],
            "acc": [0.9, 0.8],
            "acc_low": [0.85, 0.7],
            "acc_high": [0.95, 0.9],
            "p": [2.1e-5, 0.04],
        }
    )
    header, rows, _ = parse(show(df, digits=2).html)
    assert header == ["model", "micro P@1", "acc", "p"]
    assert rows[0] == ["m1", "0.69 [0.56, 0.80]", "0.90 [0.85, 0.95]", "2.1e-05"]
    assert rows[1] == ["m2", "0.50", "0.80 [0.70, 0.90]", "0.04"]
    header, rows, _ = parse(show(df, ci=[("acc", "acc_low", "acc_high")]).html)
    assert header == ["model", "micro P@1", "micro P@1 CI", "acc", "p"]
    assert parse(show(df, ci=None).html)[0] == list(df.columns)
    with pytest.raises(TableError, match=r"ci column\(s\) \['acc_hi'\] not in the table"):
        show(df, ci=[("acc", "acc_low", "acc_hi")])


def test_caption_and_notebook_display():
    df = pd.DataFrame({"a": [1, 2]})
    table = show(df, caption="Counts <by> class")
    assert table._repr_html_() == table.html
    _, _, soup = parse(table.html)
    assert soup.find("caption").get_text().startswith("Counts <by> class")  # escaped, then read back
    assert "Counts <by> class" in repr(table)
    with pytest.raises(TypeError, match="DataFrame"):
        show([1, 2])


def test_an_estimate_outside_its_interval_is_marked_and_explained():
    df = pd.DataFrame(
        {"model": ["a", "b", "c"], "f1": [0.345, 0.5, 0.7], "f1 lo": [0.402, 0.45, np.nan], "f1 hi": [0.477, 0.55, 0.8]}
    )  # fmt: skip
    table = show(df, caption="macro F1")
    assert table.frame["f1"].tolist() == [
        "0.345 [0.402, 0.477] †",
        "0.500 [0.450, 0.550]",
        f"0.700 [{MISSING}, 0.800]",
    ]
    assert "† (1 cell): the estimate lies outside its percentile bootstrap interval" in table.html
    inside = show(df.iloc[1:], caption="macro F1")
    assert "†" not in inside.html


def test_a_zero_width_interval_is_marked_as_no_spread_not_certainty():
    df = pd.DataFrame({"model": ["a", "b", "c"], "P@1": [1.0, 0.8, 1.0], "P@1 lo": [1.0, 0.6, 1.0],
                       "P@1 hi": [1.0, 0.9, 1.0], "n_cases": [13, 13, 3]})  # fmt: skip
    table = show(df, caption="P@1")
    # the row with 3 cases shows no interval (too few cases), so only the first is marked
    assert table.frame["P@1"].tolist() == ["1.000 [1.000, 1.000] ‡", "0.800 [0.600, 0.900]", "1.000"]
    assert "‡ (1 cell): an interval of zero width: every case gives the same value" in table.html
    assert "‡" not in show(df.iloc[1:], caption="P@1").html


def test_p_values_at_the_bootstrap_floor_are_marked_and_p_min_is_not_shown():
    from cbmir.metrics import bootstrap

    df = pd.DataFrame({"model": ["a", "b", "c"], "p_value": [2 / 1001, 0.31, np.nan], "p_holm": [4 / 1001, 0.31, np.nan],
                       "p_min": bootstrap.p_floor(1000)})  # fmt: skip
    table = show(df, caption="pairs")
    assert list(table.frame.columns) == ["model", "p_value", "p_holm"]
    assert table.frame["p_value"].tolist() == ["≤ 0.002", "0.310", MISSING]
    assert table.frame["p_holm"].tolist() == ["≤ 0.004", "0.310", MISSING]
    assert "≤ (1 row): every resampled difference had the same sign" in table.html
    assert "the smallest the B = 1,000 resamples can give" in table.html
    assert "≤" not in show(df.iloc[1:], caption="pairs").html
    # B = 10,000 and a Holm factor of 6: the bound 0.0012 reads "≤ 0.002", never rounded down to 0.001
    many = pd.DataFrame({"p_value": [2 / 10001], "p_holm": [12 / 10001], "p_min": [bootstrap.p_floor(10000)]})
    assert show(many).frame.iloc[0].tolist() == ["≤ 0.001", "≤ 0.002"]
    row = {"p_value": 2 / 10001, "p_holm": 12 / 10001, "p_min": bootstrap.p_floor(10000)}
    assert findings._p_text(row, "")[1] == "p ≤ 0.002 (Holm-adjusted)"


def test_whole_columns_are_rounded_to_whole_numbers_for_reading():
    df = pd.DataFrame({"index_images": [12345.6667, 9.4, np.nan], "share": [0.12345, 0.5, 0.25]})
    table = show(df, whole=["index_images"])
    assert table.frame["index_images"].tolist() == ["12,346", "9", MISSING]
    assert table.frame["share"].tolist() == ["0.123", "0.500", "0.250"]


def test_rows_with_too_few_cases_show_their_estimate_without_an_interval():
    df = pd.DataFrame({"class": ["a", "b", "c"], "P@1": [0.5, 0.25, 0.9], "P@1 lo": [0.0, 0.1, 0.8],
                       "P@1 hi": [1.0, 0.4, 0.95], "n_cases": [2, 5, 4]})  # fmt: skip
    table = show(df, caption="per class")
    assert table.frame["P@1"].tolist() == ["0.500", "0.250 [0.100, 0.400]", "0.900"]
    assert "2 rows with fewer than 5 cases show no interval:" in table.html
    tested = df.assign(p_value=[0.001, 0.2, 0.01], p_holm=[0.003, 0.2, 0.02], p_min=0.001)
    shown = show(tested, caption="per class")  # no p-value either where there is no interval
    assert shown.frame["p_value"].tolist() == [MISSING, "0.200", MISSING]
    assert shown.frame["p_holm"].tolist() == [MISSING, "0.200", MISSING]
    assert "show no interval or p-value" in shown.html and "≤ (" not in shown.html
    one = show(df.iloc[:2], caption="per class", min_cases=2)  # the threshold is a parameter
    assert one.frame["P@1"].tolist() == ["0.500 [0.000, 1.000]", "0.250 [0.100, 0.400]"]
    assert "fewer than" not in one.html
    # a table without a cases column, or without intervals, is left as it was
    assert show(df.drop(columns="n_cases"), caption="x").frame["P@1"].iloc[0] == "0.500 [0.000, 1.000]"
    assert "fewer than" not in show(df[["class", "P@1", "n_cases"]], caption="x", ci=None).html


def test_a_p_value_just_below_alpha_reads_as_below_it_not_as_0050():
    df = pd.DataFrame({"model": ["a", "b", "c"], "p_holm": [0.04995, 0.0504, 0.051]})
    assert show(df, caption="pairs").frame["p_holm"].tolist() == ["< 0.05", "0.050", "0.051"]
