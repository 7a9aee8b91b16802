"""The parsed-manifest cache: the same frame as `read_manifest`, rebuilt when the CSV changes or the cache breaks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from cbmir import manifest as manifest_module
from cbmir.manifest import ManifestError, read_manifest, read_manifest_cached

# the authors' form (labels 0.0 / 1.0) with metadata columns, one of them partly empty
CSV = """filepath,dataset,split,modality,anatomic_region,XR/chest/No Finding,XR/chest/Edema,patient_id,age
a.png,nih14,train,XR,chest,1.0,0.0,p1,40
b.png,nih14,train,XR,chest,0.0,1.0,p1,
c.png,nih14,val,XR,chest,0.0,1.0,p2,51
d.png,nih14,test,XR,chest,1.0,0.0,p3,63
"""


def _csv(tmp_path: Path, text: str = CSV, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path):
        raise AssertionError(f"read_manifest was called for {path}: the cache was not used")

    monkeypatch.setattr(manifest_module, "read_manifest", fail)


def test_second_read_comes_from_the_cache_and_equals_read_manifest(tmp_path, monkeypatch):
    csv, cache = _csv(tmp_path), tmp_path / "cache"
    expected = read_manifest(csv)
    first = read_manifest_cached(csv, cache)
    assert len(list(cache.glob("manifest-*.parquet"))) == 1
    _no_parsing(monkeypatch)
    second = read_manifest_cached(csv, cache)
    for got in (first, second):
        pd.testing.assert_frame_equal(got, expected)  # values, column order and dtypes (int8 labels, str)
    assert second["age"].isna().sum() == 1


def test_several_csvs_are_cached_as_their_concatenation(tmp_path, monkeypatch):
    lines = CSV.splitlines()
    a = _csv(tmp_path, "\n".join(lines[:3]) + "\n", "a.csv")
    b = _csv(tmp_path, "\n".join([lines[0], *lines[3:]]) + "\n", "b.csv")
    expected = read_manifest([a, b])
    read_manifest_cached([a, b], tmp_path / "cache")
    _no_parsing(monkeypatch)
    pd.testing.assert_frame_equal(read_manifest_cached([a, b], tmp_path / "cache"), expected)


def test_an_edited_csv_is_read_again_and_replaces_the_old_cache(tmp_path):
    csv, cache = _csv(tmp_path), tmp_path / "cache"
    before = read_manifest_cached(csv, cache)
    old = set(cache.glob("manifest-*.parquet"))
    _csv(tmp_path, CSV.replace("d.png,nih14,test,XR,chest,1.0,0.0", "d.png,nih14,test,XR,chest,0.0,1.0"))
    after = read_manifest_cached(csv, cache)
    assert before.loc[3, "XR/chest/Edema"] == 0 and after.loc[3, "XR/chest/Edema"] == 1
    pd.testing.assert_frame_equal(after, read_manifest(csv))
    new = set(cache.glob("manifest-*.parquet"))
    assert len(new) == 1 and not new & old  # the stale copy is gone


def test_an_unreadable_cache_is_reported_and_rebuilt(tmp_path):
    csv, cache = _csv(tmp_path), tmp_path / "cache"
    read_manifest_cached(csv, cache)
    (stored,) = cache.glob("manifest-*.parquet")
    stored.write_bytes(b"PAR1 truncated")
    with pytest.warns(UserWarning, match="cached manifest unreadable"):
        got = read_manifest_cached(csv, cache)
    pd.testing.assert_frame_equal(got, read_manifest(csv))
    pd.testing.assert_frame_equal(pd.read_parquet(stored), got)  # rewritten whole


def test_bad_csvs_raise_read_manifests_errors_and_cache_nothing(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ManifestError, match="missing.csv"):
        read_manifest_cached(tmp_path / "missing.csv", cache)
    bad = _csv(tmp_path, CSV.replace("c.png,nih14,val,XR,chest,0.0,1.0", "c.png,nih14,val,XR,chest,0.0,yes"))
    with pytest.raises(ManifestError, match="row 3"):
        read_manifest_cached(bad, cache)
    assert not list(cache.glob("*"))


def test_context_reads_the_manifest_through_the_work_dirs_cache(tmp_path, monkeypatch):
    from cbmir import pipeline

    csv = _csv(tmp_path)
    cfg = type(
        "Cfg", (), {"manifest": csv, "work_dir": tmp_path / "work", "max_per_class": None, "models": []}
    )
    monkeypatch.setattr(pipeline, "load_config", lambda *a, **kw: cfg)
    import cbmir.search

    monkeypatch.setattr(cbmir.search, "_CACHE_DIR", None)  # restored after the test
    first = pipeline.Context.open("any.yaml").manifest
    assert len(list((tmp_path / "work" / "cache").glob("manifest-*.parquet"))) == 1
    assert cbmir.search._CACHE_DIR == tmp_path / "work" / "indexes"  # built IVF-PQ indexes are kept there
    _no_parsing(monkeypatch)
    pd.testing.assert_frame_equal(pipeline.Context.open("any.yaml").manifest, first)
