"""Tables formatted for reading, in notebooks and on the report's website.

`show(df, caption=...)` returns a `Table` that notebooks display as HTML: every row and column (never
truncated), no meaningless 0..n-1 index, each estimate and its confidence interval in one cell
("0.594 [0.550, 0.630]"), numbers rounded for reading, long tables folded into a `<details>` element, and a
caption that says what the table is. The CSV written by `Context.save_table` stays unrounded; `show` only
formats what is displayed.

In a notebook:

    from cbmir.tables import show
    table = summary.display_table(summary.model_table(...))
    ctx.save_table(table, "08_summary-by-model")  # the unrounded CSV
    show(table, caption="Micro and macro P@N of every model, ranked by micro P@1")  # ci="auto" finds the CIs

`Context.show_table(df, name, caption)` does both steps.
"""

from __future__ import annotations

import html
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cbmir.errors import CbmirError

# Column-name patterns `ci="auto"` recognises beside an estimate column `c`.
CI_BOUND_SUFFIXES = ((" lo", " hi"), ("_lo", "_hi"), (" low", " high"), ("_low", "_high"))
CI_TEXT_SUFFIXES = (" CI", "_ci", " ci")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|NaN")
MISSING = "—"
# below this many independent cases: no interval shown, no direction claimed (cbmir.analyses.findings)
MIN_CASES = 5
CASES_COLUMNS = ("n_cases", "cases")  # a table's number of independent cases per row, where it has one
FEW_NOTE = (
    " {n} row{s} with fewer than {m} cases show{v} no {what}: too few cases for a bootstrap to bound or test "
    "anything (the CSV keeps the values)."
)

_STYLE = (
    "<style>"
    ".cbmir-table{overflow-x:auto;margin:0.5em 0 1em}"
    ".cbmir-table table{border-collapse:collapse;font-size:0.9em}"
    ".cbmir-table caption{caption-side:top;text-align:left;padding:0.3em 0;font-weight:600}"
    ".cbmir-table caption .note{font-weight:normal;color:#555}"
    ".cbmir-table th,.cbmir-table td{padding:0.25em 0.6em;border-bottom:1px solid #ddd;"
    "text-align:left;vertical-align:top}"
    ".cbmir-table th{border-bottom:2px solid #999}"
    ".cbmir-table td.num,.cbmir-table th.num{text-align:right;white-space:nowrap;"
    "font-variant-numeric:tabular-nums}"
    ".cbmir-table summary{cursor:pointer;font-weight:600;padding:0.3em 0}"
    "</style>"
)


class TableError(CbmirError, KeyError):
    """A column named in `ci` is not in the table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Table:
    """A table formatted for reading: `frame` holds the displayed text, `html` the rendered table."""

    frame: pd.DataFrame
    caption: str
    html: str
    numeric: tuple[str, ...] = ()

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        text = self.frame.to_string(index=False) if len(self.frame.columns) else "(no columns)"
        return f"{self.caption}\n{text}" if self.caption else text


def show(
    df: pd.DataFrame,
    caption: str = "",
    ci: str | Sequence[tuple[str, ...]] | None = "auto",
    digits: int = 3,
    collapse_after: int | None = 25,
    ci_label: str = "95 % confidence interval",
    index: bool | None = None,
    whole: Sequence[str] = (),
    min_cases: int = MIN_CASES,
) -> Table:
    """Format `df` for reading; display the returned `Table` in a notebook (it renders as HTML).

    - `caption`: what the table is (shown above it, and on the fold of a long table).
    - `ci`: estimates to merge with their interval into one cell: a list of `(estimate, lo, hi)` column triples,
      or `(estimate, interval)` pairs where `interval` holds "[lo, hi]" text or (lo, hi) pairs; `"auto"` finds
      columns named `<estimate> lo`/`<estimate> hi` (also `_lo`/`_hi`, `low`/`high`) or `<estimate> CI`;
      `None` merges nothing. The bound columns are dropped from the display.
    - `digits`: decimals of floats (non-zero values below 10**-digits are written as 1.2e-05, except in a merged
      estimate [lo, hi] cell, which is rounded to `digits` throughout).
    - `collapse_after`: tables with more rows are folded into a `<details>` element (every row is still in
      the HTML); `None` never folds.
    - `index`: show the index as the first column(s); by default only when it is not the plain 0..n-1 range.
    - `whole`: columns shown rounded to whole numbers with thousands separators (e.g. a mean count of images).
    - `min_cases`: rows whose cases column (`n_cases` or `cases`) counts fewer show their estimates without an
      interval and without p-values, with a note (the rule of the report's sentences).
    - A `p_min` column (the bootstrap's floor of `p_value`) is not shown: `p_value` and `p_holm` read "≤ ..." in
      the rows where `p_value` is at that floor.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"show() expects a pandas DataFrame, got {type(df).__name__}")
    frame = _with_index(df, index)
    frame.columns = [_column_name(c) for c in frame.columns]
    pairs = _ci_columns(frame, ci)
    shown: dict[str, list[str]] = {}
    numeric: list[str] = []
    dropped = {c for spec in pairs for c in spec[1:]} | {P_MIN_COLUMN}
    merged = {spec[0]: spec for spec in pairs}
    few = few_cases(frame, min_cases)
    floor = _at_p_floor(frame) & ~few
    for col in frame.columns:
        if col in dropped and col not in merged:
            continue
        if col in merged:
            cells = _ci_cells(frame, merged[col], digits)  # the estimate alone where too few cases carry a CI
            shown[col] = [
                _fixed(e, digits) if f else c for e, c, f in zip(frame[col], cells, few, strict=True)
            ]
            numeric.append(col)
        else:
            values = frame[col]
            shown[col] = [format_whole(v) if col in whole else format_value(v, digits) for v in values]
            if col in P_COLUMNS:  # no p-value where too few cases carry a test (as no interval)
                shown[col] = [
                    MISSING
                    if f
                    else f"≤ {round_up(v, digits)}"
                    if at and c != MISSING
                    else _below_alpha(v, c)
                    for v, c, at, f in zip(values, shown[col], floor, few, strict=True)
                ]
            if _is_numeric(values):
                numeric.append(col)
    out = pd.DataFrame(shown, columns=list(shown))
    note = f"[lo, hi]: {ci_label}." if pairs else ""
    outside = sum(cell.endswith(OUTSIDE_MARK) for spec in pairs for cell in shown[spec[0]])
    if outside:
        note += OUTSIDE_NOTE.format(n=outside, s="" if outside == 1 else "s")
    flat = sum(cell.endswith(FLAT_MARK) for spec in pairs for cell in shown[spec[0]])
    if flat:
        note += FLAT_NOTE.format(n=flat, s="" if flat == 1 else "s")
    has_p = any(c in shown for c in P_COLUMNS)
    borderline = sum(cell == "< 0.05" for c in P_COLUMNS if c in shown for cell in shown[c])
    if borderline:
        note += BORDERLINE_NOTE.format(n=borderline, s="" if borderline == 1 else "s")
    if (pairs or has_p) and few.any():
        n_few = int(few.sum())
        what = " or ".join(w for w, on in (("interval", pairs), ("p-value", has_p)) if on)
        note += FEW_NOTE.format(
            n=n_few, s="" if n_few == 1 else "s", m=min_cases, v="s" if n_few == 1 else "", what=what
        )
    if floor.any() and any(c in shown for c in P_COLUMNS):
        resamples = sorted({round(2 / p - 1) for p in frame.loc[floor, P_MIN_COLUMN]})
        b = "B = " + " or ".join(f"{r:,}" for r in resamples)
        note += P_FLOOR_NOTE.format(n=int(floor.sum()), s="" if floor.sum() == 1 else "s", b=b)
    html_text = _render(out, caption, note, numeric, collapse_after)
    return Table(frame=out, caption=caption, html=html_text, numeric=tuple(numeric))


def at_p_floor(p_value: object, p_min: object) -> np.ndarray:
    """Where a bootstrap p-value is at its floor `p_min` (`cbmir.metrics.bootstrap.p_floor`): every resampled
    difference had one sign, and the p-value (and a Holm adjustment of it) is an upper bound. NaN: False."""
    p = pd.to_numeric(pd.Series(np.atleast_1d(p_value)), errors="coerce").to_numpy(dtype=np.float64)
    floor = pd.to_numeric(pd.Series(np.atleast_1d(p_min)), errors="coerce").to_numpy(dtype=np.float64)
    return np.nan_to_num(p, nan=np.inf) <= np.nan_to_num(floor, nan=-np.inf) * (1 + 1e-9)


def _at_p_floor(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose `p_value` is at its bootstrap floor `p_min` (all False without both columns)."""
    if P_MIN_COLUMN not in frame.columns or "p_value" not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return at_p_floor(frame["p_value"].to_numpy(), frame[P_MIN_COLUMN].to_numpy())


def round_up(value: float, digits: int = 3) -> str:
    """An upper bound rounded up at `digits` decimals ('0.0012' -> '0.002'), so that the bound shown still holds."""
    scale = 10**digits
    return f"{math.ceil(float(value) * scale - 1e-9) / scale:.{digits}f}"


def format_whole(value: object) -> str:
    """A number rounded to a whole one, with thousands separators ('12,346'); missing values as in `format_value`."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
        return f"{round(float(value)):,}"
    return format_value(value)


FLOAT_NOISE = 1e-12  # a real this close to 0 is rounding error of a sum or difference, shown as 0


def format_value(value: object, digits: int = 3) -> str:
    """One cell for reading: floats rounded to `digits` decimals (a non-zero one too small for them in
    scientific notation, e.g. a chance value of 8.1e-06; below `FLOAT_NOISE`, 0), integers with thousands
    separators."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        x = float(value)
        if math.isnan(x):
            return MISSING
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if abs(x) < FLOAT_NOISE:  # e.g. -4.4e-16, the difference of two equal sums: a zero
            return f"{0:.{digits}f}"
        if abs(x) < 0.5 * 10.0**-digits:
            return f"{x:.1e}"
        return f"{x:.{digits}f}"
    if value is pd.NA or value is pd.NaT:
        return MISSING
    return str(value)


def format_ci(estimate: object, lo: object, hi: object, digits: int = 3) -> str:
    """'0.594 [0.550, 0.630]'; a missing interval leaves the estimate alone. All three are rounded to `digits`
    decimals (never 1.1e-17: a bound beside a rounded estimate is read at the same precision; -0.000 reads 0.000)."""
    est = _fixed(estimate, digits)
    lo_s, hi_s = _fixed(lo, digits), _fixed(hi, digits)
    if lo_s == MISSING and hi_s == MISSING:
        return est
    return f"{est} [{lo_s}, {hi_s}]"


def _fixed(value: object, digits: int) -> str:
    """`format_value` without scientific notation for small reals; a rounded negative zero reads as zero."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        x = float(value)
        if math.isfinite(x):
            text = f"{x:.{digits}f}"
            return text[1:] if text.startswith("-") and float(text) == 0 else text
    return format_value(value, digits)


def _with_index(df: pd.DataFrame, index: bool | None) -> pd.DataFrame:
    plain = isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
    plain = plain and all(name is None for name in df.index.names)
    keep = (not plain) if index is None else index
    if not keep:
        return df.reset_index(drop=True)
    names = [n if n is not None else "" for n in df.index.names]
    out = df.copy()
    out.index = out.index.set_names(names)
    return out.reset_index()


def _column_name(col: object) -> str:
    if isinstance(col, tuple):
        return " ".join(str(c) for c in col if str(c) != "")
    return str(col)


def _ci_columns(frame: pd.DataFrame, ci: str | Sequence[tuple[str, ...]] | None) -> list[tuple[str, ...]]:
    columns = list(frame.columns)
    if ci is None:
        return []
    if isinstance(ci, str):
        if ci != "auto":
            raise TableError(f"show(): ci must be 'auto', None or a list of column tuples, got {ci!r}")
        found = []
        for col in columns:
            for lo_suffix, hi_suffix in CI_BOUND_SUFFIXES:
                if f"{col}{lo_suffix}" in columns and f"{col}{hi_suffix}" in columns:
                    found.append((col, f"{col}{lo_suffix}", f"{col}{hi_suffix}"))
                    break
            else:
                for suffix in CI_TEXT_SUFFIXES:
                    if f"{col}{suffix}" in columns:
                        found.append((col, f"{col}{suffix}"))
                        break
        return found
    specs = []
    for spec in ci:
        spec = tuple(spec)
        if len(spec) not in (2, 3):
            raise TableError(
                f"show(): each ci entry is (estimate, lo, hi) or (estimate, interval); got {spec!r}"
            )
        missing = [c for c in spec if c not in columns]
        if missing:
            raise TableError(f"show(): ci column(s) {missing} not in the table; its columns are {columns}")
        specs.append(spec)
    return specs


def few_cases(frame: pd.DataFrame, min_cases: int = MIN_CASES) -> np.ndarray:
    """Per row: True where the table's cases column (`CASES_COLUMNS`) counts fewer than `min_cases`; all False
    without such a column."""
    col = next((c for c in CASES_COLUMNS if c in frame and _is_numeric(frame[c])), None)
    if col is None:
        return np.zeros(len(frame), dtype=bool)
    return (pd.to_numeric(frame[col], errors="coerce") < min_cases).to_numpy(dtype=bool)


def _ci_cells(frame: pd.DataFrame, spec: tuple[str, ...], digits: int) -> list[str]:
    est = frame[spec[0]].tolist()
    if len(spec) == 3:
        return [
            format_ci(e, lo, hi, digits) + _interval_mark(e, lo, hi)
            for e, lo, hi in zip(est, frame[spec[1]], frame[spec[2]], strict=True)
        ]
    cells = []
    for e, interval in zip(est, frame[spec[1]], strict=True):
        bounds = _parse_interval(interval)
        if bounds is None:
            text = "" if _missing(interval) else f" {interval}"
            cells.append(format_value(e, digits) + text)
        else:
            cells.append(format_ci(e, *bounds, digits))
    return cells


P_COLUMNS = ("p_value", "p_holm")
ALPHA = 0.05  # level of the Holm-adjusted paired tests (the findings' sentences use it too)


def rounds_up_to_alpha(p: object, text: str) -> bool:
    """Whether `p` is below ALPHA but its rounded `text` reads ALPHA or more (it is then shown as '< 0.05')."""
    try:
        return isinstance(p, numbers.Real) and p < ALPHA <= float(text)
    except ValueError:  # not a number (a missing-value mark)
        return False


def _below_alpha(value: object, cell: str) -> str:
    """A p-value cell; one just below 0.05 that rounds to 0.05 reads '< 0.05' (as the findings' sentences say)."""
    return "< 0.05" if rounds_up_to_alpha(value, cell) else cell


BORDERLINE_NOTE = (
    " < 0.05 ({n} cell{s}): a p-value below 0.05 that would round to 0.050; it counts as below 0.05, but so close to "
    "it another bootstrap seed could put it either side."
)
P_MIN_COLUMN = "p_min"  # the bootstrap's smallest possible p-value per row (cbmir.metrics.bootstrap.p_floor)
P_FLOOR_NOTE = (
    " ≤ ({n} row{s}): every resampled difference had the same sign, so the p-value is the smallest the {b} "
    "resamples can give, 2 / (B + 1), and the true p-value may be smaller (a Holm-adjusted one is scaled with it)."
)
OUTSIDE_MARK = "†"
FLAT_MARK = "‡"
FLAT_NOTE = (
    " ‡ ({n} cell{s}): an interval of zero width: every case gives the same value, so no resample differs from the "
    "estimate. It shows no spread among these cases, not certainty about others (a difference from a chance value "
    "that differs per query can still vary)."
)
OUTSIDE_NOTE = (
    " † ({n} cell{s}): the estimate lies outside its percentile bootstrap interval. Such an interval need not "
    "contain the estimate; for a macro average this happens when classes with few cases are missing from many "
    "resamples, which shifts the resampled mean."
)


def _interval_mark(estimate: object, lo: object, hi: object) -> str:
    """' †' for an estimate outside its interval, ' ‡' for an interval of zero width, else ''."""
    if outside_interval(estimate, lo, hi):
        return f" {OUTSIDE_MARK}"
    return f" {FLAT_MARK}" if zero_width(lo, hi) else ""


def zero_width(lo: object, hi: object) -> bool:
    """Whether real, finite bounds coincide (beyond rounding): a bootstrap in which every case scored alike."""
    return _finite_reals(lo, hi) and bool(abs(hi - lo) <= 1e-12)


def _finite_reals(*values: object) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def outside_interval(estimate: object, lo: object, hi: object) -> bool:
    """Whether a real estimate lies outside the real bounds [lo, hi] (beyond rounding)."""
    return _finite_reals(estimate, lo, hi) and bool(estimate < lo - 1e-12 or estimate > hi + 1e-12)


def _parse_interval(value: object) -> tuple[float, float] | None:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return float(value[0]), float(value[1])
    if isinstance(value, str):
        nums = _NUMBER.findall(value)
        if len(nums) == 2:
            return float(nums[0]), float(nums[1])
    return None


def _missing(value: object) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _render(
    out: pd.DataFrame, caption: str, note: str, numeric: list[str], collapse_after: int | None
) -> str:
    n_rows = len(out)
    cls = {c: ' class="num"' if c in numeric else "" for c in out.columns}
    head = "".join(f"<th{cls[c]}>{html.escape(c)}</th>" for c in out.columns)
    rows = []
    for record in out.itertuples(index=False, name=None):
        cells = "".join(
            f"<td{cls[c]}>{html.escape(v)}</td>" for c, v in zip(out.columns, record, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    size = f"{n_rows:,} row{'s' if n_rows != 1 else ''}"
    note_parts = " ".join(p for p in (note, f"{size}.") if p)
    cap = f"{html.escape(caption)} " if caption else ""
    table = (
        f'<table><caption>{cap}<span class="note">{html.escape(note_parts)}</span></caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    if collapse_after is not None and n_rows > collapse_after:
        summary = f"{html.escape(caption) + ' — ' if caption else ''}{size} (click to show)"
        table = f"<details><summary>{summary}</summary>{table}</details>"
    return f'{_STYLE}<div class="cbmir-table" data-rows="{n_rows}" data-columns="{len(out.columns)}">{table}</div>'
