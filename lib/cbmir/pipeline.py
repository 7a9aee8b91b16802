"""The pipeline as the notebooks see it: one `Context` per notebook run, with cached stages.

A notebook does `ctx = Context.open(config, quick=quick, out_root=out_root)`; then `ctx.embeddings(model)`
extracts or reuses the store, `ctx.neighbours(model)` searches or reuses the neighbour table, and
`ctx.save_figure` / `ctx.save_table` write the outputs where the config says. Each stage reads only the files
of the stage before it (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cbmir.config import ReportConfig, load_config, slug
from cbmir.errors import CbmirError
from cbmir.manifest import case_ids, read_manifest_cached, row_labels, split_rows
from cbmir.search import Neighbours
from cbmir.store import EmbeddingStore, ManifestVectors, write_json

if TYPE_CHECKING:
    from cbmir.tables import Table


def _meta_key(meta: Path) -> str | None:
    """The key recorded beside a neighbour table (None if the file is unreadable)."""
    try:
        return json.loads(meta.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class Context:
    """One notebook run: the config, the manifest, and each model's store and vectors (opened once, cached).

    `open` also keeps every IVF-PQ index it builds under `<work_dir>/indexes` (`cbmir.search.cache_indexes_in`).
    The stores' matrices are memmaps: when a notebook moves on to another model, the previous model's resident
    pages are released from the process (`EmbeddingStore.release_pages`), so memory grows with the largest model,
    not with the number of models. `wait`: a store or neighbour table being written by another process is waited
    for instead of an error.
    """

    cfg: ReportConfig
    manifest: pd.DataFrame
    wait: bool = False
    _stores: dict[str, EmbeddingStore] = field(default_factory=dict, repr=False)
    _vectors: dict[str, ManifestVectors] = field(default_factory=dict, repr=False)
    # (model, query split) -> "authors" | "search": where `neighbours` took them from in this session
    neighbour_sources: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _current: str | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        config: str | Path = "configs/radmini.yaml",
        quick: bool = False,
        out_root: str | Path | None = None,
    ) -> Context:
        cfg = load_config(config, quick=quick, out_root=out_root)
        from cbmir.plots import set_model_order
        from cbmir.search import cache_indexes_in

        set_model_order(cfg.models)  # one colour per model in every figure of the run
        # an IVF-PQ index built by one notebook is loaded by the next
        cache_indexes_in(cfg.work_dir / "indexes")
        manifest = read_manifest_cached(cfg.manifest, cfg.work_dir / "cache")
        if cfg.max_per_class:
            manifest = subsample_per_class(manifest, cfg.max_per_class, seed=cfg.seed)
        return cls(cfg, manifest)

    # ---- labels and rows -------------------------------------------------------------------------
    def labels(self, level: str = "label") -> np.ndarray:
        """The label of every manifest row at `level` (modality, region or label)."""
        return row_labels(self.manifest, level)

    def rows(self, split: str) -> np.ndarray:
        return split_rows(self.manifest, split)

    @cached_property
    def cases(self) -> np.ndarray:
        """The case (patient) code of every manifest row (`cbmir.manifest.case_ids`)."""
        return case_ids(self.manifest)

    def image_path(self, row: int, thumb: bool = False) -> Path:
        root = self.cfg.thumbs_root if thumb and self.cfg.thumbs_root else self.cfg.data_root
        path = root / self.manifest["filepath"].iloc[row]
        return (
            path if path.exists() or not thumb else self.cfg.data_root / self.manifest["filepath"].iloc[row]
        )

    @cached_property
    def pretraining_exclusion(self):  # -> cbmir.models.overlap.Exclusion | None
        """With `exclude_pretraining_images`, the query rows a model's published training list names (dropped
        from every model's queries, so all are scored on the same ones) and the count removed per list."""
        if not self.cfg.exclude_pretraining_images:
            return None
        from cbmir.models.overlap import exclude_listed

        lists = {m: (v.path, v.column) for m, v in self.cfg.pretraining_image_lists.items()}
        return exclude_listed(self.manifest, lists, self.cfg.models)

    def shown_path(self, path: Path) -> str:
        """`path` as a rendered report shows it: relative to the project root when inside it, else as given."""
        try:
            return Path(path).resolve().relative_to(Path(self.cfg.root).resolve()).as_posix()
        except ValueError:
            return str(path)

    def images_present(self, rows: np.ndarray | None = None, sample: int = 50) -> bool:
        """True when the image files of `rows` (default: a seeded sample of `sample` manifest rows) exist under
        `data_root`; routes without images (published embeddings) skip galleries and image checks."""
        rows = np.arange(len(self.manifest)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(rows) > sample:
            rows = np.random.default_rng(self.cfg.seed).choice(rows, sample, replace=False)
        paths = self.manifest["filepath"].to_numpy()
        return bool(len(rows)) and all((self.cfg.data_root / str(paths[r])).is_file() for r in rows)

    # ---- stage 2: embeddings ---------------------------------------------------------------------
    def store_dir(self, model: str) -> Path:
        return self.cfg.work_dir / "embeddings" / slug(model)

    def embeddings(self, model: str, redo: bool = False) -> EmbeddingStore:
        """The model's embedding store over the whole manifest: extracted once, then reused (checked once)."""
        from cbmir import extract

        self._switch_to(model)
        if redo or model not in self._stores:
            self._vectors.pop(model, None)
            imported = imported_store(self.store_dir(model))
            if imported is not None:  # published embeddings (cbmir import-authors): used as they are
                self._stores[model] = imported
                return imported
            self._stores[model] = extract.extract_embeddings(
                self.manifest,
                self.cfg.data_root,
                model,
                self.store_dir(model),
                batch_size=self.cfg.batch_size_for(model),
                bf16=self.cfg.bf16,
                precision=self.cfg.precision,
                num_workers=self.cfg.workers,
                redo=redo,
                checkpoint=self.cfg.checkpoints.get(model),
                wait=self.wait,
                engine=self.cfg.engine,
                ray_address=self.cfg.ray_address,
                compile=self.cfg.compile,
                decode_cache=self.cfg.decode_cache,
            )
            store = self._stores[model]
            if isinstance(store, EmbeddingStore) and len(store) == 0 and len(store.failed):
                first = store.failed.iloc[0]
                raise CbmirError(
                    f"{model}: none of the manifest's {len(store.failed)} images could be embedded (the first, "
                    f"{first['filepath']}: {first['error']}); are the images under data_root = {self.cfg.data_root}?"
                )
        return self._stores[model]

    def _switch_to(self, model: str) -> None:
        """Release the resident pages of the model used before `model` (they are read back if used again)."""
        previous, self._current = self._current, model
        store = self._stores.get(previous) if previous != model else None
        if isinstance(store, EmbeddingStore):
            store.release_pages()

    def vectors(self, model: str) -> ManifestVectors:
        """The model's vectors for the manifest rows (`.store_row` is -1 where an image failed to load)."""
        self._switch_to(model)
        if model not in self._vectors:
            self._vectors[model] = self.embeddings(model).vectors_for(self.manifest)
        return self._vectors[model]

    def searchable_rows(self, model: str, split: str) -> np.ndarray:
        """Manifest rows of `split` that have an embedding (images that failed to load are left out)."""
        return self.vectors(model).present(self.rows(split))

    # ---- stage 3: neighbours ---------------------------------------------------------------------
    def neighbours_path(self, model: str, query_split: str = "test", index_split: str = "train") -> Path:
        return self.cfg.work_dir / "neighbours" / f"{slug(model)}--{query_split}-in-{index_split}.npz"

    @property
    def search_settings(self) -> dict:
        """The config's search index: `index_type` plus its builder parameters (keyword arguments of search)."""
        return {"index_type": self.cfg.index_type, **self.cfg.index_params}

    def neighbours(
        self, model: str, query_split: str = "test", index_split: str = "train", redo: bool = False
    ) -> Neighbours:
        """Top-k neighbours (manifest rows) of every `query_split` row among the `index_split` rows.

        With a `patient_id` column, neighbours of the query's own case are never returned (nothing changes
        when query and index share no case). A table whose key matches is reused; a damaged one is rebuilt.
        """
        from cbmir.search import NeighbourTableError, max_k, search_rows, table_lock

        path = self.neighbours_path(model, query_split, index_split)
        vectors = self.vectors(model)
        index_rows = self.searchable_rows(model, index_split)
        query_rows = self.searchable_rows(model, query_split)
        if self.pretraining_exclusion is not None:
            query_rows = self.pretraining_exclusion.keep(query_rows)
        cases = self.cases
        limit = max_k(
            len(index_rows), *(None, None) if cases is None else (cases[index_rows], cases[query_rows])
        )
        k = min(self.cfg.k, limit)
        if self.cfg.neighbours == "authors" and index_split == "train" and query_split in ("test", "val"):
            nb = self._authors_neighbours(model, query_rows, index_rows, k)
            self.neighbour_sources[model, query_split] = "authors" if nb is not None else "search"
            if nb is not None:
                return nb
        key = self._neighbours_key(model, index_rows, query_rows)
        meta = path.with_suffix(".json")
        with table_lock(path, wait=self.wait):
            if path.exists() and meta.exists() and not redo and _meta_key(meta) == key:
                try:
                    return Neighbours.load(path)
                except NeighbourTableError as err:
                    warnings.warn(f"rebuilding a damaged neighbour table: {err}", stacklevel=2)
            with contextlib.suppress(FileNotFoundError):
                meta.unlink()  # the key is written only after its table has landed
            nb = search_rows(vectors, index_rows, query_rows, k=k, cases=cases, **self.search_settings)
            nb.save(path)
            write_json(
                meta, {"key": key, "k": k, "same_case_excluded": cases is not None, **self.search_settings}
            )
        return nb

    def authors_neighbours_path(self, model: str) -> Path:
        """The authors' neighbour lists of `model` as `cbmir import-authors` writes them (test and val queries)."""
        return self.cfg.work_dir / "neighbours" / f"{slug(model)}--authors-knn.npz"

    def _authors_neighbours(
        self, model: str, query_rows: np.ndarray, index_rows: np.ndarray, k: int
    ) -> Neighbours | None:
        """The first `k` of the authors' neighbours of `query_rows` (config `neighbours: authors`), or None with
        a warning saying why they cannot stand in for a search: no imported table, another index, a query
        missing, fewer than k neighbours, or a neighbour from the query's own case. Their knn.csv holds no
        similarities: `scores` are NaN."""
        path = self.authors_neighbours_path(model)
        if not path.is_file():
            return None
        table = Neighbours.load(path)
        pos = pd.Index(table.query_rows).get_indexer(query_rows)
        cases = self.cases
        if table.index_rows is None or not np.array_equal(np.sort(table.index_rows), np.sort(index_rows)):
            why = "their index is not this config's train rows with an embedding"
        elif (pos < 0).any():
            why = f"{int((pos < 0).sum())} query rows are not in it"
        elif table.k < k:
            why = f"it has {table.k} neighbours per query, the config asks for k = {k}"
        else:
            ids = table.ids[pos, :k]
            same = int((cases[ids] == cases[query_rows][:, None]).sum())
            if not same:
                return Neighbours(query_rows, ids, np.full(ids.shape, np.nan, np.float32), table.index_rows)
            why = f"{same} neighbours share the query's case"
        warnings.warn(
            f"{model}: searching instead of using the authors' neighbours {path}: {why}", stacklevel=3
        )
        return None

    def search_sentence(self, models: list[str] | None = None) -> str:
        """Where the neighbours of `models` came from (a phrase for the method text): the authors' lists for
        a model whose every `neighbours` call this session used them, else the config's search index."""
        from cbmir.analyses.classify import index_sentence

        models = list(models or self.cfg.models)
        searched = index_sentence(self.cfg.index_type, self.cfg.index_params)
        used = {}
        for (m, _), source in self.neighbour_sources.items():
            used.setdefault(m, set()).add(source)
        authors = [m for m in models if used.get(m) == {"authors"}]
        if not authors:
            return searched
        own = "the authors' published neighbour lists (their exact cosine search; knn.csv)"
        rest = [m for m in models if m not in authors]
        if not rest:
            return own
        return f"{own} for {', '.join(authors)}; {searched} for {', '.join(rest)}"

    def query(self, image: str | Path, model: str, k: int = 10, index_split: str = "train") -> pd.DataFrame:
        """Query by example: the top-k `index_split` images for one image file (PNG, JPEG or DICOM).

        The image is embedded exactly as the store was (same preprocessing, precision and normalisation).
        """
        from cbmir.extract import embed_images
        from cbmir.images import load_image
        from cbmir.models import load_encoder
        from cbmir.precision import resolve_device
        from cbmir.search import search

        store = self.embeddings(model)
        device = str(store.provenance.get("device") or "")
        if device.startswith("cuda") and resolve_device(None) != "cuda":
            device = "cpu"  # the store was made on a GPU this machine lacks
        device = resolve_device(device or None)
        encoder = load_encoder(model, checkpoint=self.cfg.checkpoints.get(model), device=device)
        query = embed_images(
            encoder, [load_image(image)], bf16=bool(store.provenance.get("bf16")), device=device,
            precision=_query_precision(store.provenance.get("dtype"), device),
        )  # fmt: skip
        vectors = self.vectors(model)
        index_rows = self.searchable_rows(model, index_split)
        scores, pos = search(vectors.take(index_rows), query, k=min(k, len(index_rows)), progress=False)
        rows = index_rows[pos[0]]
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(rows) + 1),
                "row": rows,
                "filepath": self.manifest["filepath"].to_numpy()[rows],
                "label": self.labels("label")[rows],
                "cosine": scores[0],
            }
        )

    # ---- text queries (image-text models; cbmir.text_retrieval) -----------------------------------------
    def encoder(self, model: str):
        """The model's `Encoder` on the device its store was made on where this machine has it (loaded once
        per Context; its text tower loads on first text query)."""
        from cbmir.models import load_encoder
        from cbmir.precision import resolve_device

        cache = self.__dict__.setdefault("_encoders", {})
        if model not in cache:
            device = str(self.embeddings(model).provenance.get("device") or "")
            if device.startswith("cuda") and resolve_device(None) != "cuda":
                device = "cpu"
            device = resolve_device(device or None)
            cache[model] = load_encoder(model, checkpoint=self.cfg.checkpoints.get(model), device=device)
        return cache[model]

    @property
    def prompt_templates(self) -> list[str]:
        """The config's `prompt_templates`, else `cbmir.text_retrieval.DEFAULT_TEMPLATE`."""
        from cbmir.text_retrieval import DEFAULT_TEMPLATE

        return list(self.cfg.prompt_templates) or [DEFAULT_TEMPLATE]

    def text_query(self, text: str, model: str, k: int = 10, index_split: str = "train") -> pd.DataFrame:
        """Query by text: the top-k `index_split` images for a sentence (`NoTextTowerError` for image-only models)."""
        from cbmir.text_retrieval import embed_texts, search_text

        query = embed_texts(self.encoder(model), [text])
        index_rows = self.searchable_rows(model, index_split)
        scores, pos = search_text(self.vectors(model).take(index_rows), query, k)
        rows = index_rows[pos[0]]
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(rows) + 1),
                "row": rows,
                "filepath": self.manifest["filepath"].to_numpy()[rows],
                "label": self.labels("label")[rows],
                "cosine": scores[0],
            }
        )

    def _neighbours_key(self, model: str, index_rows: np.ndarray, query_rows: np.ndarray) -> str:
        """Changes whenever the store, the rows, their cases or the search settings change (then it is redone)."""
        h = hashlib.sha256((self.store_dir(model) / "provenance.json").read_bytes())
        fp = self.manifest["filepath"].to_numpy().astype(str)
        for rows in (index_rows, query_rows):
            h.update("\n".join(fp[rows]).encode() + b"\x00")
        if self.cases is None:
            h.update(b"cases: none\x00")
        else:
            for rows in (index_rows, query_rows):
                h.update(np.ascontiguousarray(self.cases[rows], dtype=np.int64).tobytes() + b"\x00")
        h.update(f"{self.cfg.k}|{json.dumps(self.search_settings, sort_keys=True)}".encode())
        return h.hexdigest()

    def cached_table(
        self, name: str, compute: Callable[..., pd.DataFrame], *args: Any, **kwargs: Any
    ) -> pd.DataFrame:
        """`compute(*args, **kwargs)`, kept under `<work_dir>/cache/tables/<name>.parquet`: a later notebook of the
        run that asks for the same table with the same inputs reads it instead of computing it again (notebook 8
        reads notebook 3's precision curves). The key is a hash of every argument (arrays by their bytes), of
        `compute`'s name and of the cbmir library's source, so a change to any of them recomputes the table."""
        key = fingerprint(compute.__module__, compute.__qualname__, library_source_hash(), args, kwargs)
        path = self.cfg.work_dir / "cache" / "tables" / f"{name}.parquet"
        meta = path.with_suffix(".json")
        try:
            kept = json.loads(meta.read_text())
            if kept.get("key") == key:
                table = pd.read_parquet(path)
                table.attrs.update(kept.get("attrs", {}))
                return table
        except (OSError, ValueError):
            pass
        table = compute(*args, **kwargs)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        table.to_parquet(tmp, index=False)
        tmp.replace(path)
        write_json(meta, {"key": key, "attrs": table.attrs})
        return table

    # ---- outputs ---------------------------------------------------------------------------------
    def save_figure(self, fig, name: str, images: bool = False) -> Path:
        """Write the figure as PNG and SVG under figures/<config>/; return the PNG path (`images`: galleries)."""
        from cbmir.plots import save_figure

        return save_figure(fig, self.cfg.figures_dir / name, images=images)

    def save_table(self, df: pd.DataFrame, name: str) -> Path:
        """Store `df` unrounded as reports/<config>/tables/<name>.csv; return the CSV's path."""
        path = self.cfg.reports_dir / "tables" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        return path

    def save_findings(self, markdown: str) -> Path:
        """Write the report's findings (markdown) to reports/<config>/findings.md (the site's landing page reads
        it); return its path."""
        from cbmir.site import FINDINGS

        path = self.cfg.reports_dir / FINDINGS
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(markdown if markdown.endswith("\n") else markdown + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def show_table(self, df: pd.DataFrame, name: str, caption: str, **show_options: Any) -> Table:
        """Store `df` unrounded (`save_table`) and return it formatted for reading (`cbmir.tables.show`)."""
        from cbmir.tables import show

        self.save_table(df, name)
        return show(df, caption=caption, **show_options)


def fingerprint(*parts: Any) -> str:
    """A sha256 of `parts`: arrays by dtype, shape and bytes (object arrays by pandas' value hashes), mappings
    in key order, sequences in order, anything else by its repr."""
    h = hashlib.sha256()

    def add(x: Any) -> None:
        if isinstance(x, (np.ndarray, pd.Series)):
            a = np.asarray(x)
            h.update(f"array {a.dtype} {a.shape}|".encode())
            if a.dtype == object:
                a = pd.util.hash_array(a.ravel())
            h.update(np.ascontiguousarray(a).tobytes())
        elif isinstance(x, dict):
            h.update(b"dict|")
            for k in sorted(x, key=str):
                add(str(k))
                add(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"seq {len(x)}|".encode())
            for v in x:
                add(v)
        else:
            h.update(f"{type(x).__name__} {x!r}|".encode())

    for part in parts:
        add(part)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def library_source_hash() -> str:
    """A sha256 of every module of the installed cbmir package (a change to any of them changes it)."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\x00" + path.read_bytes())
    return h.hexdigest()


def imported_store(path: Path) -> EmbeddingStore | None:
    """The complete store at `path` when it was imported from published embeddings (`cbmir.authors`), else None."""
    from cbmir.authors import SOURCE
    from cbmir.store import is_complete

    if not is_complete(path):
        return None
    if json.loads((path / "provenance.json").read_text()).get("source") != SOURCE:
        return None
    return EmbeddingStore.open(path)


def subsample_per_class(manifest: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """At most `n` rows of every (split, label): seeded, spread over as many cases as possible.

    Cases are the `patient_id` values (each row its own case where the column is absent). Within a
    (split, label) the cases are visited in a seeded random order, taking one image per case per round (each
    case's images in a seeded order), so `n` rows come from min(n, cases) different cases. The result does not
    depend on the row order of `manifest`; rows keep their manifest order.
    """
    if n < 1:
        raise ValueError(f"max_per_class must be >= 1, got {n}")
    fp = manifest["filepath"].astype(str).to_numpy()
    case = manifest["patient_id"].astype(str).to_numpy() if "patient_id" in manifest.columns else fp
    table = pd.DataFrame(
        {
            "split": manifest["split"].astype(str).to_numpy(),
            "label": row_labels(manifest, "label"),
            "case": case,
            "fp": fp,
        }
    )

    def draw(values: np.ndarray, salt: str) -> np.ndarray:  # a seeded, order-independent key per value
        return np.array(
            [
                int.from_bytes(hashlib.sha256(f"{seed}:{salt}:{v}".encode()).digest()[:8], "big")
                for v in values
            ]
        )

    table["case_key"] = draw(table["case"].to_numpy(), "case")
    table["image_key"] = draw(table["fp"].to_numpy(), "image")
    table = table.sort_values(["split", "label", "case", "image_key", "fp"], kind="stable")
    table["round"] = table.groupby(["split", "label", "case"], sort=False).cumcount()
    table = table.sort_values(
        ["split", "label", "round", "case_key", "case", "image_key", "fp"], kind="stable"
    )
    keep = table.index[table.groupby(["split", "label"], sort=False).cumcount().to_numpy() < n]
    return manifest.iloc[np.sort(keep.to_numpy())].reset_index(drop=True)


def _query_precision(dtype: str | None, device: str) -> str | None:
    """The store's precision for a query, except fp16 on a machine without CUDA (then bf16, the closest)."""
    if dtype == "fp16" and not device.startswith("cuda"):
        return "bf16"
    return dtype
