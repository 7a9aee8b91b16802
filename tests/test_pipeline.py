"""The notebook Context over a tiny store: vectors opened once, same-case exclusion, cached and damaged
neighbour tables, one writer per table, and query-by-example through the store's own embedding path."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from cbmir.locking import LockedError, writer_lock
from cbmir.pipeline import Context
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _embed_worker import tiny_encoder  # noqa: E402

MODEL = "tiny-test"


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    """40 images of 10 patients; patients 0-5 have images in both train and test (as slices of a volume can)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for i in range(40):
        name = f"img_{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / name)
        label = ["CT/lung/a", "CT/lung/b"][i % 2]
        rows.append({"filepath": name, "dataset": "toy", "split": "test" if i % 4 == 3 else "train",
                     "modality": "CT", "anatomic_region": "lung", "patient_id": f"p{i // 4}",
                     "CT/lung/a": int(label == "CT/lung/a"), "CT/lung/b": int(label == "CT/lung/b")})  # fmt: skip
    (root / "img_13.png").write_bytes(b"not an image")  # one failed image
    cfg = SimpleNamespace(
        work_dir=tmp_path / "work", data_root=root, batch_size_for=lambda model: 8, bf16=True, checkpoints={}, k=5,
        index_type="flat", index_params={}, neighbours="search", thumbs_root=None, precision=None, workers=0, engine="local", ray_address=None, compile="auto", decode_cache=None,
        exclude_pretraining_images=False, pretraining_image_lists={},
    )  # fmt: skip
    monkeypatch.setattr(
        "cbmir.models.load_encoder", lambda spec, **kw: tiny_encoder(spec=spec), raising=False
    )
    return Context(cfg, pd.DataFrame(rows))


def test_store_is_opened_and_checked_once(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    import cbmir.extract

    calls = []
    real = cbmir.extract._ids_sha256
    monkeypatch.setattr(cbmir.extract, "_ids_sha256", lambda *a: calls.append(1) or real(*a))
    ctx.neighbours(MODEL)
    ctx.neighbours(MODEL, "train", "train")
    ctx.searchable_rows(MODEL, "test")
    vec = ctx.vectors(MODEL)
    assert len(calls) == 1 and vec is ctx.vectors(MODEL)
    assert vec.failed_rows.tolist() == [13] and 13 not in ctx.searchable_rows(MODEL, "train")


def test_moving_to_another_model_releases_the_previous_models_pages(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cbmir.store import EmbeddingStore

    released: list[str] = []
    monkeypatch.setattr(EmbeddingStore, "release_pages", lambda self: released.append(self.path.name) or True)
    first = ctx.vectors(MODEL).take(ctx.searchable_rows(MODEL, "test"))
    ctx.neighbours(MODEL)  # the same model again: nothing released
    assert released == []
    ctx.vectors("tiny-other")
    assert released == [MODEL]  # the store folder is named by the model's slug
    ctx.embeddings("tiny-other")
    assert released == [MODEL]
    again = ctx.vectors(MODEL).take(ctx.searchable_rows(MODEL, "test"))  # still readable, the same values
    assert released == [MODEL, "tiny-other"] and np.array_equal(first, again)


def _reference(ctx: Context, index_rows: np.ndarray, query_rows: np.ndarray, k: int) -> np.ndarray:
    """Per query: drop index rows of the same patient, rank the rest by cosine."""
    vec, patient = ctx.vectors(MODEL), ctx.manifest["patient_id"].to_numpy()
    out = []
    for q in query_rows:
        keep = [r for r in index_rows if patient[r] != patient[q]]
        sims = vec.take(keep) @ vec.take([q])[0]
        out.append(np.asarray(keep)[np.argsort(-sims, kind="stable")[:k]])
    return np.array(out)


def test_neighbours_never_come_from_the_query_patient(ctx: Context) -> None:
    nb = ctx.neighbours(MODEL)
    patient = ctx.manifest["patient_id"].to_numpy()
    assert not (patient[nb.ids] == patient[nb.query_rows][:, None]).any()
    np.testing.assert_array_equal(nb.ids, _reference(ctx, nb.index_rows, nb.query_rows, nb.k))
    loo = ctx.neighbours(MODEL, "train", "train")  # leave-one-patient-out within one split
    assert not (patient[loo.ids] == patient[loo.query_rows][:, None]).any()


def test_neighbour_table_cache_key_follows_the_cases(ctx: Context) -> None:
    path = ctx.neighbours_path(MODEL)
    first = ctx.neighbours(MODEL)
    stamp = path.stat().st_mtime_ns
    assert (
        ctx.neighbours(MODEL).ids.tolist() == first.ids.tolist() and path.stat().st_mtime_ns == stamp
    )  # reused
    other = Context(ctx.cfg, ctx.manifest.drop(columns="patient_id"), _stores=ctx._stores)
    without = other.neighbours(MODEL)
    assert path.stat().st_mtime_ns != stamp  # the cases changed: searched again
    patient = ctx.manifest["patient_id"].to_numpy()
    assert (
        patient[without.ids] == patient[without.query_rows][:, None]
    ).any()  # exclusion really was on before
    again = Context(ctx.cfg, ctx.manifest, _stores=ctx._stores).neighbours(MODEL)
    np.testing.assert_array_equal(again.ids, first.ids)


def test_truncated_neighbour_table_is_rebuilt(ctx: Context) -> None:
    first = ctx.neighbours(MODEL)
    path = ctx.neighbours_path(MODEL)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.warns(UserWarning, match="rebuilding a damaged neighbour table"):
        again = ctx.neighbours(MODEL)
    np.testing.assert_array_equal(again.ids, first.ids)
    np.testing.assert_array_equal(type(first).load(path).ids, first.ids)


def test_one_writer_per_neighbour_table(ctx: Context) -> None:
    path = ctx.neighbours_path(MODEL)
    path.parent.mkdir(parents=True)
    with writer_lock(path.with_name(path.name + ".lock"), "held"):
        with pytest.raises(LockedError, match=rf"neighbour table .* being written by process {os.getpid()}"):
            ctx.neighbours(MODEL)
    assert ctx.neighbours(MODEL).k == 5


def test_query_by_example_finds_itself_first_with_the_stored_vector(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cbmir.extract
    from cbmir.models.base import Encoder

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("queries are embedded through the extraction path, not Encoder.embed_images")

    seen = []
    real = cbmir.extract.embed_images
    monkeypatch.setattr(Encoder, "embed_images", forbidden)
    monkeypatch.setattr(
        cbmir.extract, "embed_images", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no precision fallback: the query runs as the store did
        hits = ctx.query(ctx.cfg.data_root / "img_05.png", MODEL, k=3)
    assert hits["row"].iloc[0] == 5 and hits["filepath"].iloc[0] == "img_05.png"
    assert abs(hits["cosine"].iloc[0] - 1.0) < 1e-6
    np.testing.assert_allclose(seen[0][0], ctx.vectors(MODEL).take([5])[0], atol=1e-6)  # the very same vector
    assert ctx.embeddings(MODEL).provenance["precision"] == "weights+autocast"  # bf16 on the CPU
    assert hits["rank"].tolist() == [1, 2, 3] and (np.diff(hits["cosine"]) <= 0).all()


def test_findings_are_written_where_the_site_reads_them(ctx: Context, tmp_path: Path) -> None:
    from cbmir.site import FINDINGS

    ctx.cfg.reports_dir = tmp_path / "reports" / "toy"
    path = ctx.save_findings("# Findings\n\n- one")
    assert path == tmp_path / "reports" / "toy" / FINDINGS
    assert path.read_text(encoding="utf-8") == "# Findings\n\n- one\n"
    ctx.save_findings("- two\n")
    assert path.read_text(encoding="utf-8") == "- two\n"
    assert [p.name for p in path.parent.iterdir()] == [FINDINGS]


def test_no_image_found_stops_at_once_naming_data_root(ctx: Context, tmp_path: Path) -> None:
    from cbmir.errors import CbmirError

    ctx.cfg.data_root = tmp_path / "nowhere"  # e.g. a clone whose images were never built
    with pytest.raises(
        CbmirError,
        match=r"none of the manifest's 40 images could be embedded .*img_00.png: file not found.*nowhere",
    ):
        ctx.embeddings(MODEL)


def test_a_table_computed_once_is_read_back_by_a_later_call_with_the_same_inputs(ctx: Context) -> None:
    from cbmir.analyses import retrieval

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return retrieval.precision_curves(*args, **kwargs)

    counted.__module__, counted.__qualname__ = "tests", "counted"
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, 40)]
    cases = np.arange(40) // 2
    ids = np.stack([rng.permutation(np.arange(20, 40))[:5] for _ in range(20)])
    args = (ids, np.arange(20), np.arange(20, 40), labels, cases)
    first = ctx.cached_table("curves--m", counted, *args, n_boot=20, seed=0)
    again = ctx.cached_table("curves--m", counted, *args, n_boot=20, seed=0)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(again, first)  # the same values, dtypes and order
    assert again.attrs == first.attrs and "n_excluded" in first.attrs
    ctx.cached_table("curves--m", counted, *args, n_boot=20, seed=1)  # another parameter
    other = labels.copy()
    other[0] = "c" if other[0] != "c" else "a"
    ctx.cached_table("curves--m", counted, *args[:3], other, cases, n_boot=20, seed=1)  # one label changed
    assert len(calls) == 3
    path = ctx.cfg.work_dir / "cache" / "tables" / "curves--m.parquet"
    path.write_bytes(b"not parquet")  # a damaged copy is computed again, not read
    pd.testing.assert_frame_equal(
        ctx.cached_table("curves--m", counted, *args[:3], other, cases, n_boot=20, seed=1),
        retrieval.precision_curves(*args[:3], other, cases, n_boot=20, seed=1),
    )
    assert len(calls) == 4


def test_shown_path_is_relative_to_the_project_root_inside_it(ctx: Context, tmp_path: Path) -> None:
    ctx.cfg.root = tmp_path
    assert ctx.shown_path(tmp_path / "data" / "x.md") == "data/x.md"
    outside = Path(os.sep) / "elsewhere" / "images"
    assert ctx.shown_path(outside) == str(outside)
