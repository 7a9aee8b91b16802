"""Dataset manifests: read, validate and concatenate tables in the paper's schema.

A manifest is a UTF-8 CSV with the columns `filepath, dataset, split, modality, anatomic_region`, then one
one-hot column per label. **Label columns are the columns whose name contains "/"** (`XR/chest/Pneumonia`);
any other extra column (`patient_id`, `frame`, ...) is metadata and is kept as is.

**The label path defines the label levels**: modality = its first component, region = its first two. The
`modality` and `anatomic_region` columns must equal the label's first and second components, compared exactly
(case included); a row that disagrees is rejected naming both values. Our preparers, RadMini and the authors'
preparation scripts all write them that way (`XR`/`chest` for `XR/chest/...`, RadImageNet's folder names).

A file that is not a UTF-8 CSV (a spreadsheet saved as .xlsx or UTF-16, latin-1 text, binary data) is
rejected with a `ManifestError` naming the file and what was found; a UTF-8 byte-order mark (Excel's "CSV
UTF-8") is accepted.

The authors' published split CSVs (Zenodo 11196400, written by their `prepare_*.py` scripts with
`to_csv(index=False)`) are accepted unchanged: their label values are written as `0.0` / `1.0` (floats after a
`fillna(0.0)`), which we accept and store as `int8`. A leading unnamed index column (what `to_csv()` writes
without `index=False`) is dropped, in case a user re-saved a table that way.

Rows in error messages are 1-based data rows of the file (row 1 = the first line after the header).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cbmir.errors import CbmirError

BASE_COLUMNS = ("filepath", "dataset", "split", "modality", "anatomic_region")
SPLITS = ("train", "val", "test")
LEVELS = ("modality", "region", "label")
CASE_COLUMN = "patient_id"  # optional metadata: the independent case (patient, volume, near-duplicate group)

_ABSOLUTE = re.compile(r"^(?:[/\\]|[A-Za-z]:)")
_ESCAPES = re.compile(r"(?:^|[/\\])\.\.(?:[/\\]|$)")
_INDEX_COLUMN = re.compile(r"^(Unnamed: 0|index)?$")
ENCODING = "utf-8-sig"  # UTF-8, with or without a byte-order mark


class ManifestError(CbmirError, ValueError):
    """A manifest that does not follow the schema; the message names the file, row and column."""


def label_columns(df: pd.DataFrame) -> list[str]:
    """The label columns of `df`: every column whose name contains "/", in table order."""
    return [c for c in df.columns if isinstance(c, str) and "/" in c]


def _where(source: str, df: pd.DataFrame, pos: int, parts: Sequence[tuple[str, int]] | None = None) -> str:
    """Describe row position `pos`: file, 1-based data row and filepath.

    `parts` lists `(file name, first row position)` of each concatenated file, in order.
    """
    fp = df["filepath"].iloc[pos] if "filepath" in df.columns else "?"
    if parts:
        name, offset = parts[bisect.bisect_right([o for _, o in parts], pos) - 1]
        return f"{name}, row {pos - offset + 1} (filepath {fp!r})"
    return f"{source}, row {pos + 1} (filepath {fp!r})"


def validate_manifest(
    df: pd.DataFrame, source: str = "<manifest>", _parts: Sequence[tuple[str, int]] | None = None
) -> None:
    """Raise `ManifestError` (naming `source`, the row and the column) unless `df` follows the schema."""
    if len(df) == 0:
        raise ManifestError(f"{source}: the manifest has no rows")
    missing = [c for c in BASE_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing column(s) {missing}; found {list(df.columns)}")
    labels = label_columns(df)
    if not labels:
        raise ManifestError(f"{source}: no label columns (label columns are named like 'XR/chest/Pneumonia')")

    def where(pos: int) -> str:
        return _where(source, df, int(pos), _parts)

    for col in BASE_COLUMNS:
        values = df[col]
        bad = values.isna().to_numpy() | (values.astype(str).to_numpy() == "")
        if bad.any():
            raise ManifestError(f"{where(np.flatnonzero(bad)[0])}: column {col!r} is empty")

    fp = df["filepath"].astype(str)
    for pattern, what in ((_ABSOLUTE, "is absolute"), (_ESCAPES, "escapes the data root with '..'")):
        bad = fp.str.contains(pattern).to_numpy()
        if bad.any():
            raise ManifestError(
                f"{where(np.flatnonzero(bad)[0])}: column 'filepath' {what}; "
                "filepaths must be relative to the data root"
            )

    split = df["split"].astype(str)
    bad = ~split.isin(SPLITS).to_numpy()
    if bad.any():
        pos = np.flatnonzero(bad)[0]
        raise ManifestError(
            f"{where(pos)}: column 'split' has {split.iloc[pos]!r}; allowed {list(SPLITS)} "
            f"(unknown values in the table: {sorted(set(split[bad]))})"
        )

    counts = np.zeros(len(df), dtype=np.int64)
    label_of_row = np.zeros(len(df), dtype=np.int64)  # position in `labels` of each row's (last) 1
    for j, col in enumerate(labels):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isin(values, (0.0, 1.0))
        if bad.any():
            pos = np.flatnonzero(bad)[0]
            raise ManifestError(
                f"{where(pos)}: label column {col!r} has {_show(df[col].iloc[pos])}; label values must be 0 or 1"
            )
        counts += values.astype(np.int64)
        label_of_row[values == 1.0] = j
    bad = counts != 1
    if bad.any():
        pos = np.flatnonzero(bad)[0]
        if counts[pos] == 0:
            raise ManifestError(f"{where(pos)}: no label column is 1; every row needs exactly one label")
        ones = [c for c in labels if float(df[c].iloc[pos]) == 1.0]
        raise ManifestError(
            f"{where(pos)}: {counts[pos]} label columns are 1 ({ones}); every row needs exactly one label"
        )

    _check_levels_agree(df, labels, label_of_row, where)

    dup = fp.duplicated(keep=False).to_numpy()
    if dup.any():
        first = np.flatnonzero(dup)[0]
        same = np.flatnonzero(fp.to_numpy() == fp.iloc[first])
        raise ManifestError(
            f"{where(same[1])}: column 'filepath' duplicates {where(same[0])}; filepaths must be unique"
        )


def _check_levels_agree(
    df: pd.DataFrame, labels: list[str], label_of_row: np.ndarray, where: Callable[[int], str]
) -> None:
    """`modality` and `anatomic_region` must equal the first and second components of the row's label."""
    parts = [name.split("/") for name in labels]
    for col, component, level in (("modality", 0, "modality"), ("anatomic_region", 1, "region")):
        expected = np.array([p[component] for p in parts], dtype=object)[label_of_row]
        given = df[col].astype(str).to_numpy(dtype=object)
        bad = given != expected
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ManifestError(
                f"{where(pos)}: column {col!r} is {given[pos]!r} but the row's label "
                f"{labels[label_of_row[pos]]!r} has {level} {expected[pos]!r}; the label path defines the "
                f"{level} (component {component + 1} of the label name)"
            )


def _show(value: object) -> str:
    """A cell value for an error message (numbers plainly, missing cells as 'an empty cell')."""
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return "an empty cell"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return repr(value)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Label columns to int8, base columns to str (call after validation)."""
    df = df.copy()
    labels = label_columns(df)
    numeric = {c: df[c].dtype.kind in "fiub" for c in labels}
    df[labels] = (
        df[labels].apply(lambda col: col if numeric[col.name] else pd.to_numeric(col)).astype(np.int8)
    )
    for col in BASE_COLUMNS:
        df[col] = df[col].astype(str)
    return df.reset_index(drop=True)


# What a manifest file that is not a CSV text file usually turns out to be, by its first bytes.
_SIGNATURES = (
    (b"PK\x03\x04", "a ZIP archive (an .xlsx or .ods spreadsheet?)"),
    (b"\xd0\xcf\x11\xe0", "an OLE2 file (an .xls spreadsheet?)"),
    (b"\xff\xfe\x00\x00", "UTF-32 text"),
    (b"\x00\x00\xfe\xff", "UTF-32 text"),
    (b"\xff\xfe", "UTF-16 text"),
    (b"\xfe\xff", "UTF-16 text"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF", "a PDF document"),
)
EXPECTED = "expected a CSV text file in UTF-8 (from a spreadsheet: save as 'CSV UTF-8')"
_SNIFF_BYTES = 1 << 16


def _check_is_text(path: Path) -> None:
    """Refuse binary files and other encodings by their first bytes, naming what was found."""
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            raise ManifestError(f"{path}: {what}, not a CSV text file; {EXPECTED}")
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise ManifestError(
            f"{path}: NUL byte on line {line} (binary data, or UTF-16 text without a byte-order mark); {EXPECTED}"
        )


def _not_utf8(path: Path) -> ManifestError:
    """A ManifestError naming the first line that is not UTF-8 and its offending byte."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                byte = line[err.start]
                return ManifestError(
                    f"{path}: not UTF-8 text (line {number} has byte 0x{byte:02x}, e.g. latin-1 or Windows-1252 "
                    f"text); {EXPECTED}"
                )
    return ManifestError(f"{path}: not UTF-8 text; {EXPECTED}")


def _read_one(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    _check_is_text(path)
    try:
        header = pd.read_csv(path, nrows=0, encoding=ENCODING).columns
        dtypes = {c: str for c in BASE_COLUMNS if c in header}
        dtypes.update({c: np.float32 for c in header if "/" in c})
        try:
            df = pd.read_csv(path, dtype=dtypes, low_memory=False, encoding=ENCODING)
        except ValueError as err:  # a label cell that is not a number: read as text so validation can name it
            if isinstance(err, UnicodeDecodeError):
                raise
            text = {c: str for c in BASE_COLUMNS if c in header}
            df = pd.read_csv(path, dtype=text, low_memory=False, encoding=ENCODING)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise ManifestError(
            f"{path}: cannot read as CSV ({' '.join(str(err).split())}); {EXPECTED}"
        ) from None
    if len(df.columns) and _INDEX_COLUMN.match(str(df.columns[0])) and df.columns[0] not in BASE_COLUMNS:
        df = df.drop(columns=df.columns[0])
    if len(df.columns) == 1 and not set(BASE_COLUMNS) & set(df.columns):
        only = str(df.columns[0])
        sep = next((s for s in (";", "\t", "|") if s in only), None)
        found = f"columns separated by {sep!r}" if sep else f"one column {only[:60]!r}"
        raise ManifestError(
            f"{path}: found {found}; expected comma-separated columns {', '.join(BASE_COLUMNS)}, <labels>"
        )
    return df


def read_manifest(path: str | os.PathLike | Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Read one manifest CSV, or several concatenated, validated; label columns as int8."""
    if isinstance(path, (str, os.PathLike)):
        df = _read_one(path)
        validate_manifest(df, source=str(path))
        return _normalise(df)
    paths = list(path)
    if not paths:
        raise ManifestError("read_manifest: parameter 'path' is an empty list")
    frames = []
    for p in paths:
        df = _read_one(p)
        validate_manifest(df, source=str(p))
        frames.append(df)
    return concat_manifests(frames, sources=[str(p) for p in paths])


MANIFEST_CACHE_FORMAT = 1  # raise when what read_manifest returns changes, so older caches are not used


def _content_key(paths: Sequence[Path]) -> str:
    """A hash of the files' bytes (with the cache format and the pandas version that wrote the cache)."""
    digest = hashlib.sha256(json.dumps([MANIFEST_CACHE_FORMAT, pd.__version__]).encode())
    for p in paths:
        with open(p, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:20]


def read_manifest_cached(
    path: str | os.PathLike | Sequence[str | os.PathLike], cache_dir: str | os.PathLike
) -> pd.DataFrame:
    """`read_manifest`, with the validated frame kept as parquet in `cache_dir` and reused while the CSVs' bytes
    are unchanged.

    Parsing and validating is the fixed cost of every notebook at the paper's size (1.6 M rows x 161 label
    columns: about a minute; the parquet copy loads in about a second, `benchmarks/RESULTS.md`). The cache is
    keyed by a hash of the CSVs' contents, so an edited manifest is read and validated again; a cache file that
    cannot be read is reported, rebuilt and replaced. Errors in the CSVs are those of `read_manifest`.
    """
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    if not paths or not all(p.is_file() for p in paths):
        return read_manifest(path)  # its error names the missing file or the empty list
    names = hashlib.sha256("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"manifest-{names}-{_content_key(paths)}.parquet"
    if cache.is_file():
        try:
            return pd.read_parquet(cache)
        except Exception as err:  # noqa: BLE001 - any unreadable cache is rebuilt from the CSVs
            warnings.warn(f"{cache}: cached manifest unreadable ({err}); reading the CSV again", stacklevel=2)
    df = read_manifest(path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    for old in cache.parent.glob(f"manifest-{names}-*.parquet"):  # earlier versions of the same CSVs
        old.unlink(missing_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, cache)  # atomic: a parallel reader sees the whole file or none
    return df


def concat_manifests(dfs: Sequence[pd.DataFrame], sources: Sequence[str] | None = None) -> pd.DataFrame:
    """Concatenate manifests: union of label columns (absent = 0), metadata kept, result validated.

    Column order: base columns, label columns in order of first appearance, then metadata columns.
    `sources` (one name per frame) makes errors name the original file and row.
    """
    dfs = list(dfs)
    if not dfs:
        raise ManifestError("concat_manifests: parameter 'dfs' is empty")
    if sources is None:
        sources = [f"manifest #{i + 1}" for i in range(len(dfs))]
    if len(sources) != len(dfs):
        raise ManifestError(f"concat_manifests: {len(sources)} sources for {len(dfs)} manifests")
    labels: dict[str, None] = {}
    meta: dict[str, None] = {}
    for df in dfs:
        labels.update(dict.fromkeys(label_columns(df)))
        meta.update(dict.fromkeys(c for c in df.columns if c not in BASE_COLUMNS and "/" not in str(c)))
    columns = list(BASE_COLUMNS) + list(labels) + list(meta)
    parts = []
    for df in dfs:
        part = df.reindex(columns=columns)
        part[list(labels)] = part[list(labels)].fillna(0)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    offsets = np.concatenate([[0], np.cumsum([len(df) for df in dfs])[:-1]])
    parts_info = [(name, int(off)) for name, off in zip(sources, offsets, strict=True)]
    validate_manifest(out, source="concatenated manifest", _parts=parts_info)
    return _normalise(out)


def row_labels(df: pd.DataFrame, level: str = "label") -> np.ndarray:
    """The label of each row at `level`: "modality" (`XR`), "region" (`XR/chest`) or "label" (full name)."""
    if level not in LEVELS:
        raise ManifestError(f"row_labels: parameter 'level' is {level!r}; allowed {list(LEVELS)}")
    labels = label_columns(df)
    if not labels:
        raise ManifestError("row_labels: the table has no label columns")
    onehot = df[labels].to_numpy()
    names = np.array(labels, dtype=object)
    if level == "modality":
        names = np.array([n.split("/")[0] for n in labels], dtype=object)
    elif level == "region":
        names = np.array(["/".join(n.split("/")[:2]) for n in labels], dtype=object)
    return names[np.argmax(onehot, axis=1)]


def split_rows(df: pd.DataFrame, split: str) -> np.ndarray:
    """Row positions (int64) of the rows of `split` ("train", "val" or "test")."""
    if split not in SPLITS:
        raise ManifestError(f"split_rows: parameter 'split' is {split!r}; allowed {list(SPLITS)}")
    return np.flatnonzero(df["split"].to_numpy() == split).astype(np.int64)


def case_ids(df: pd.DataFrame) -> np.ndarray:
    """int64 case code per row: one code per (`dataset`, `patient_id`); a row without a patient id is its own case.

    The case is the independent unit of every statistic (slices of one volume, images of one patient); a
    manifest without a `patient_id` column has one case per row.
    """
    n = len(df)
    if CASE_COLUMN not in df.columns:
        return np.arange(n, dtype=np.int64)
    pid = df[CASE_COLUMN].astype("string").fillna("").str.strip().to_numpy(dtype=object)
    dataset = df["dataset"].astype(str).to_numpy() if "dataset" in df.columns else np.full(n, "")
    keys = np.where(
        pid == "",
        [f"\x00row {i}" for i in range(n)],
        [f"{d}\x00{p}" for d, p in zip(dataset, pid, strict=True)],
    )
    return pd.factorize(pd.Series(keys), sort=False)[0].astype(np.int64)
