"""Import the authors' published artefacts (Zenodo record 11196400) into cbmir's own files.

The artefacts are found by file name, recursively, under one folder:

- `train.csv`, `val.csv`, `test.csv` (the paper's schema, in one folder): the manifest, concatenated in that order;
- `<ModelClass>/<dataset>.h5`: one HDF5 dataset per image named by its manifest filepath (its `/` makes nested
  groups), a 1-D float32 L2-normalised vector;
- `<ModelClass>/.../knn.csv` (header `query,1,...,K`, neighbour filepaths; test then val queries, the index is
  train), `retrieval.csv`, `knn_classification.csv`, `linear_probing.csv`.

Written under `out`: `manifest.csv`; `embeddings/<preset>/` (one embedding store per model, aligned to the manifest,
rows missing from the HDF5 files listed in `failed.csv` with the reason); `neighbours/<preset>--authors-knn.npz`
(a `cbmir.search.Neighbours` table over the train rows, scores NaN since knn.csv has none; its `.json` key holds
the knn.csv SHA-256); `reference/<preset>.csv` (the authors'
tables in long form: `table, N, metric, value`). Staging state lives in `.import/<preset>/` until a store is
finished, so a killed import resumes from the last finished HDF5 file; a finished model is skipped. `cache/`
holds the parsed split CSVs as parquet (`cbmir.manifest.read_manifest_cached`), which each model's job reloads.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cbmir.config import slug
from cbmir.errors import CbmirError
from cbmir.manifest import read_manifest_cached, split_rows
from cbmir.progress import hide_progress
from cbmir.search import Neighbours
from cbmir.store import EmbeddingStore, adopt_matrix, is_complete, write_csv, write_json

# The authors' model class names and the cbmir preset each corresponds to (see `cbmir models`).
MODEL_PRESETS = {
    "ViTB16": "vit-b16-in21k",
    "ViTMAEB": "vit-mae-b-paper",
    "DINOv2ViTB14": "dinov2-b14",
    "SAMViTB": "sam-vit-b",
    "MedSAMViTB": "medsam-vit-b",
    "BiomedCLIPVitB16_224": "biomedclip",
    "MedCLIP": "medclip",
    "ResNet50": "resnet50-paper",
    "CLIPOpenAIViTL14": "clip-vit-l14",
}
SPLIT_FILES = ("train.csv", "val.csv", "test.csv")
REFERENCE_FILES = ("retrieval.csv", "knn_classification.csv", "linear_probing.csv")
SOURCE = "imported from the authors' published embeddings"
STAGING = ".import"
KNN_BLOCK_BYTES = 64 << 20  # knn.csv bytes read at a time


class AuthorsImportError(CbmirError, ValueError):
    """The authors' artefacts are missing, damaged or disagree; the message names the file and key."""


@dataclass
class ModelArtefacts:
    """The files of one authors' model class found under the import folder."""

    model_class: str
    h5_files: list[Path] = field(default_factory=list)
    knn: Path | None = None
    references: dict[str, Path] = field(default_factory=dict)

    @property
    def preset(self) -> str:
        return MODEL_PRESETS[self.model_class]


def _model_of(path: Path, root: Path) -> str | None:
    """The nearest ancestor folder of `path` (below `root`) named after a known model class."""
    for parent in path.relative_to(root).parents:
        if parent.name in MODEL_PRESETS:
            return parent.name
    return None


def find_artefacts(root: str | Path) -> tuple[list[Path], dict[str, ModelArtefacts]]:
    """(the train/val/test CSVs, the artefacts of each model class) under `root`, found by name."""
    root = Path(root)
    if not root.is_dir():
        raise AuthorsImportError(f"{root}: not a folder (expected the unpacked Zenodo 11196400 record)")
    folders = sorted(
        {p.parent for p in root.rglob("train.csv") if all((p.parent / f).is_file() for f in SPLIT_FILES)}
    )
    if not folders:
        raise AuthorsImportError(f"{root}: no folder holds all of {', '.join(SPLIT_FILES)}")
    if len(folders) > 1:
        raise AuthorsImportError(
            f"{root}: several folders hold {', '.join(SPLIT_FILES)}: {[str(f) for f in folders]}"
        )
    models: dict[str, ModelArtefacts] = {}
    for path in sorted(root.rglob("*.h5")):
        if path.parent.name not in MODEL_PRESETS:
            warnings.warn(
                f"{path}: not under a known model class folder {sorted(MODEL_PRESETS)}; skipped", stacklevel=2
            )
            continue
        models.setdefault(path.parent.name, ModelArtefacts(path.parent.name)).h5_files.append(path)
    for name in ("knn.csv", *REFERENCE_FILES):
        for path in sorted(root.rglob(name)):
            model = _model_of(path, root)
            if model is None:
                continue  # e.g. the experiments folder's table across models
            art = models.setdefault(model, ModelArtefacts(model))
            if name == "knn.csv":
                if art.knn is not None:
                    raise AuthorsImportError(f"{model}: two knn.csv files: {art.knn} and {path}")
                art.knn = path
            elif name in art.references:
                raise AuthorsImportError(f"{model}: two {name} files: {art.references[name]} and {path}")
            else:
                art.references[name] = path
    return [folders[0] / f for f in SPLIT_FILES], models


def sha256(path: Path) -> str:
    """SHA-256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            h.update(block)
    return h.hexdigest()


# -------------------------------------------------------------------------------------------- embeddings
MAX_OPEN_GROUPS = 1024  # parent groups kept open per HDF5 file by `_read_vector`


def _read_vector(handle, path: Path, key: str, groups: dict) -> np.ndarray | None:
    """The vector stored under `key` as float32, or None when the file has no such dataset.

    h5py's low-level calls (open, read into a float32 buffer) are used: about three times faster per dataset
    than `handle[key][()]`, which matters at one dataset per image. `groups` caches up to `MAX_OPEN_GROUPS`
    open parent groups (key's folder -> group id), so a dataset of a class folder is opened by its name inside
    its group instead of by its whole path from the root (about half the time per open).
    """
    import h5py

    parent, _, name = key.rpartition("/")
    try:
        try:
            if parent and parent not in groups and len(groups) < MAX_OPEN_GROUPS:
                groups[parent] = h5py.h5g.open(handle.id, parent.encode())
            if parent in groups:
                node = h5py.h5d.open(groups[parent], name.encode())
            else:  # a folder per image (MIMIC, CheXpert): nothing to reuse
                node = h5py.h5d.open(handle.id, key.encode())
        except KeyError:
            if key not in handle:
                return None
            raise
        shape = node.shape
        if len(shape) != 1:
            return np.zeros(shape, dtype=np.float32)  # the caller names the shape
        vec = np.empty(shape, dtype=np.float32)
        node.read(h5py.h5s.ALL, h5py.h5s.ALL, vec)
        return vec
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        raise AuthorsImportError(
            f"{path}: cannot read dataset {key!r} (truncated or damaged HDF5: {err})"
        ) from err


def _import_h5(path: Path, rows: np.ndarray, filepaths: np.ndarray, stage: _Stage, progress: bool) -> None:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise AuthorsImportError(f"{path}: cannot open as HDF5 (truncated or damaged: {err})") from err
    groups: dict = {}
    block_rows, block = [], []  # checked and written a block at a time (vectorised norms, one memmap write)
    with handle:
        for row in tqdm(rows, desc=path.name, unit="img", disable=hide_progress(progress), leave=False):
            key = str(filepaths[row])
            vec = _read_vector(handle, path, key, groups)
            if vec is None:
                stage.reasons[int(row)] = f"not in {path.name}"
                continue
            if vec.ndim != 1:
                raise AuthorsImportError(
                    f"{path}: dataset {key!r} has shape {vec.shape}; expected a 1-D vector"
                )
            stage.check_dim(vec, path, key)
            block_rows.append(int(row))
            block.append(vec)
            if len(block) == PUT_BLOCK:
                stage.put(np.array(block_rows), np.stack(block), path)
                block_rows, block = [], []
        if block:
            stage.put(np.array(block_rows), np.stack(block), path)


PUT_BLOCK = 4096  # vectors per write into the staging memmap


class _Stage:
    """Partial results of one model: a memmap of vectors, a mask of rows filled, reasons, files done."""

    def __init__(self, folder: Path, n_rows: int, manifest_sha: str) -> None:
        self.folder, self.n_rows, self.manifest_sha = folder, n_rows, manifest_sha
        state = folder / "state.json"
        loaded = json.loads(state.read_text()) if state.is_file() else {}
        if loaded.get("manifest_sha256") != manifest_sha or not (folder / "vectors.npy").is_file():
            loaded = {}
        self.done: dict[str, dict] = loaded.get("done", {})
        self.dim: int | None = loaded.get("dim")
        self.dim_source: str | None = loaded.get("dim_source")
        self.reasons: dict[int, str] = {int(k): v for k, v in loaded.get("reasons", {}).items()}
        self.vectors: np.ndarray | None = None
        self.have = np.zeros(n_rows, dtype=bool)
        if self.done and self.dim:
            self.vectors = np.load(folder / "vectors.npy", mmap_mode="r+")
            self.have = np.load(folder / "have.npy")

    def check_dim(self, vec: np.ndarray, path: Path, key: str) -> None:
        """The first vector sets the model's dimension (and opens the staging memmap); any other is an error."""
        if self.dim is None:
            self.dim, self.dim_source = len(vec), f"{path} ({key!r})"
            self.folder.mkdir(parents=True, exist_ok=True)
            self.vectors = np.lib.format.open_memmap(
                self.folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(self.n_rows, self.dim)
            )
        if len(vec) != self.dim:
            raise AuthorsImportError(
                f"{path}: dataset {key!r} has dimension {len(vec)} but {self.dim_source} has {self.dim}"
            )

    def put(self, rows: np.ndarray, vecs: np.ndarray, path: Path) -> None:
        """Store the vectors [n, dim] of manifest `rows` (dimension checked); a non-finite or all-zero vector
        is left out with its reason."""
        norms = np.linalg.norm(vecs, axis=1)
        good = np.isfinite(norms) & (norms > 0)
        for row in rows[~good]:
            self.reasons[int(row)] = f"vector in {path.name} is not finite or all zeros"
        self.vectors[rows[good]] = vecs[good]
        self.have[rows[good]] = True

    def commit(self, path: Path, digest: str) -> None:
        """Record `path` as finished (vectors flushed first, state written atomically last)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.vectors is not None:
            self.vectors.flush()
        np.save(self.folder / "have.tmp.npy", self.have)
        (self.folder / "have.tmp.npy").replace(self.folder / "have.npy")
        self.done[path.name] = {"sha256": digest, "bytes": path.stat().st_size}
        write_json(
            self.folder / "state.json",
            {
                "manifest_sha256": self.manifest_sha,
                "dim": self.dim,
                "dim_source": self.dim_source,
                "done": self.done,
                "reasons": {str(k): v for k, v in self.reasons.items()},
            },
        )


def _finished(store_dir: Path, art: ModelArtefacts, manifest_sha: str) -> bool:
    if not is_complete(store_dir):
        return False
    prov = json.loads((store_dir / "provenance.json").read_text())
    files = {p.name: p.stat().st_size for p in art.h5_files}
    return (
        prov.get("source") == SOURCE
        and prov.get("manifest_sha256") == manifest_sha
        and {k: v["bytes"] for k, v in prov.get("files", {}).items()} == files
    )


def import_embeddings(
    art: ModelArtefacts, manifest: pd.DataFrame, out: Path, manifest_sha: str, progress: bool = True
) -> EmbeddingStore | None:
    """One store for `art`'s HDF5 files aligned to `manifest` (skipped when already finished)."""
    store_dir = out / "embeddings" / slug(art.preset)
    if not art.h5_files:
        return None
    if _finished(store_dir, art, manifest_sha):
        return EmbeddingStore.open(store_dir)
    filepaths = manifest["filepath"].to_numpy(dtype=object)
    datasets = manifest["dataset"].to_numpy(dtype=object)
    stage = _Stage(out / STAGING / slug(art.preset), len(manifest), manifest_sha)
    for path in art.h5_files:
        if path.name in stage.done:
            continue
        rows = np.flatnonzero(datasets == path.stem)
        if not len(rows):
            warnings.warn(f"{path}: no manifest row has dataset {path.stem!r}; file not used", stacklevel=2)
        digest = sha256(path)
        _import_h5(path, rows, filepaths, stage, progress)
        stage.commit(path, digest)
    for row in np.flatnonzero(~stage.have):
        if int(row) not in stage.reasons:
            stage.reasons[int(row)] = f"no {art.model_class}/{datasets[row]}.h5 among the artefacts"
    if stage.vectors is None:
        raise AuthorsImportError(
            f"{art.model_class}: none of {[str(p) for p in art.h5_files]} holds a manifest image"
        )
    keep = np.flatnonzero(stage.have)
    missing = np.flatnonzero(~stage.have)
    failed = pd.DataFrame(
        {"filepath": filepaths[missing], "error": [stage.reasons[int(r)] for r in missing]}, dtype=object
    )
    provenance = {
        "source": SOURCE,
        "authors_model_class": art.model_class,
        "preset": art.preset,
        "manifest_sha256": manifest_sha,
        "files": stage.done,
        "embedding_rule": "as published by the authors (Zenodo 11196400)",
    }
    stage.vectors.flush()
    stage.vectors = None  # close the memmap: its file becomes the store's matrix (normalised chunk by chunk)
    store = adopt_matrix(
        store_dir, stage.folder / "vectors.npy", filepaths[keep], rows=keep, spec=art.preset, failed=failed,
        provenance=provenance,
    )  # fmt: skip
    shutil.rmtree(stage.folder, ignore_errors=True)
    return store


# ------------------------------------------------------------------------------------ neighbours + tables
def read_knn(path: Path, filepaths: np.ndarray, train_rows: np.ndarray) -> Neighbours:
    """A knn.csv as a `Neighbours` table of manifest rows; a filepath the manifest lacks names file, row, value.

    Read with pyarrow's streaming CSV reader, a block of about `KNN_BLOCK_BYTES` at a time; every filepath of a
    block is looked up in one hash of the manifest's filepaths (a knn.csv of 240 k queries x 100 holds 24 M).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    header = pd.read_csv(path, nrows=0).columns
    if len(header) < 2 or header[0] != "query" or list(header[1:]) != [str(i) for i in range(1, len(header))]:
        raise AuthorsImportError(f"{path}: header {list(header[:4])}... is not 'query,1,...,K'")
    known = pa.array(np.asarray(filepaths, dtype=object).astype(str))
    queries, ids = [], []
    start = 0
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=KNN_BLOCK_BYTES),
            convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string())),
        )
        for batch in reader:
            flat = pa.concat_arrays(batch.columns)  # every column read as strings
            found = pc.index_in(flat, value_set=known).fill_null(-1).to_numpy(zero_copy_only=False)
            codes = found.astype(np.int64).reshape(batch.num_columns, batch.num_rows).T
            bad = np.argwhere(codes < 0)
            if len(bad):
                r, c = bad[0]
                value = batch.column(int(c))[int(r)].as_py()
                raise AuthorsImportError(
                    f"{path}: row {start + r + 1}, column {header[c]!r}: {value!r} is not in the manifest"
                )
            queries.append(codes[:, 0])
            ids.append(codes[:, 1:])
            start += batch.num_rows
    except pa.ArrowInvalid as err:
        raise AuthorsImportError(f"{path}: not a readable knn.csv after data row {start} ({err})") from err
    q = np.concatenate(queries) if queries else np.zeros(0, np.int64)
    nb = np.concatenate(ids) if ids else np.zeros((0, len(header) - 1), np.int64)
    return Neighbours(q, nb, np.full(nb.shape, np.nan, dtype=np.float32), index_rows=train_rows)


def reference_table(paths: dict[str, Path]) -> pd.DataFrame:
    """The authors' result tables of one model in long form: `table, N, metric, value` (N only for retrieval)."""
    parts = []
    for name, path in sorted(paths.items()):
        frame = pd.read_csv(path)
        frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("Unnamed")])
        try:
            frame = frame.apply(pd.to_numeric)
        except ValueError as err:
            raise AuthorsImportError(f"{path}: a value is not a number ({err})") from err
        table = name.removesuffix(".csv")
        if table == "retrieval":
            frame.insert(0, "N", np.arange(1, len(frame) + 1))
        else:
            frame.insert(0, "N", np.nan)
        long = frame.melt(id_vars="N", var_name="metric", value_name="value")
        long.insert(0, "table", table)
        parts.append(long)
    return pd.concat(parts, ignore_index=True)


def read_reference(path: str | Path, table: str) -> pd.DataFrame:
    """One table of a reference CSV back in wide form (retrieval: one row per N, `N` column first)."""
    long = pd.read_csv(path)
    part = long[long["table"] == table]
    if part.empty:
        raise AuthorsImportError(f"{path}: no table {table!r}")
    if table == "retrieval":
        return part.pivot(index="N", columns="metric", values="value").reset_index().rename_axis(columns=None)
    return part.set_index("metric")["value"].to_frame().T.reset_index(drop=True).rename_axis(columns=None)


# ------------------------------------------------------------------------------------------------ driver
def _filepaths_sha(manifest_file: Path) -> str:
    paths = pd.read_csv(manifest_file, usecols=["filepath"], dtype=str, keep_default_na=False)["filepath"]
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def _import_model(
    art: ModelArtefacts, manifest: pd.DataFrame, out: Path, manifest_sha: str, progress: bool
) -> dict:
    """One model's store, neighbour table and reference table; returns what was written."""
    filepaths = manifest["filepath"].to_numpy(dtype=object)
    entry: dict = {"model_class": art.model_class}
    store = import_embeddings(art, manifest, out, manifest_sha, progress)
    if store is not None:
        entry.update(store=str(store.path), rows=len(store), failed=len(store.failed))
    if art.knn is not None:
        target = out / "neighbours" / f"{slug(art.preset)}--authors-knn.npz"
        meta = target.with_suffix(".json")
        key = {"source": str(art.knn), "sha256": sha256(art.knn), "manifest_sha256": manifest_sha}
        if not (target.is_file() and meta.is_file() and json.loads(meta.read_text()) == key):
            meta.unlink(missing_ok=True)  # the key lands only after its table
            read_knn(art.knn, filepaths, split_rows(manifest, "train")).save(target)
            write_json(meta, key)
        entry["neighbours"] = str(target)
    if art.references:
        target = out / "reference" / f"{slug(art.preset)}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_csv(target, reference_table(art.references))
        entry["reference"] = str(target)
    return entry


def _import_model_in_worker(
    art: ModelArtefacts, split_csvs: list[Path], out: Path, manifest_sha: str
) -> dict:
    """`_import_model` in a worker process: the manifest is loaded there from the parquet copy that
    `import_authors` cached (a second; parsing the CSVs takes about a minute at the paper's size)."""
    return _import_model(
        art, read_manifest_cached(split_csvs, out / "cache"), out, manifest_sha, progress=False
    )


def import_authors(
    root: str | Path, out: str | Path, progress: bool = True, jobs: int = 1
) -> dict[str, dict]:
    """Import everything under `root` into `out`; returns per preset what was written or skipped.

    `jobs` > 1 imports that many models at once, each in its own process (reading one model's HDF5 files is
    single-threaded Python; each job holds one model's vectors). A model that fails does not stop the others:
    every other model is finished, then the first error is raised.
    """
    if jobs < 1:
        raise ValueError(f"parameter 'jobs' = {jobs} must be >= 1")
    out = Path(out)
    split_csvs, models = find_artefacts(root)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest_cached(split_csvs, out / "cache")  # parsed once; workers load the parquet copy
    manifest_sha = hashlib.sha256("\n".join(manifest["filepath"]).encode()).hexdigest()
    manifest_file = out / "manifest.csv"
    if not manifest_file.is_file() or _filepaths_sha(manifest_file) != manifest_sha:
        write_csv(manifest_file, manifest)
    arts = [art for _, art in sorted(models.items())]
    bar = tqdm(total=len(arts), desc="models", disable=hide_progress(progress))
    report: dict[str, dict] = {}
    errors: list[Exception] = []
    if jobs == 1 or len(arts) < 2:
        for art in arts:
            try:
                report[art.preset] = _import_model(art, manifest, out, manifest_sha, progress)
            except AuthorsImportError as err:  # the other models finish first; re-raised below
                errors.append(err)
            bar.update()
    else:
        del manifest  # each worker reads its own
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold BLAS threads
        with ProcessPoolExecutor(max_workers=min(jobs, len(arts)), mp_context=context) as pool:
            futures = {
                pool.submit(_import_model_in_worker, art, split_csvs, out, manifest_sha): art for art in arts
            }
            for future in as_completed(futures):
                try:
                    report[futures[future].preset] = future.result()
                except AuthorsImportError as err:  # the other models finish first; re-raised below
                    errors.append(err)
                bar.update()
        report = {art.preset: report[art.preset] for art in arts if art.preset in report}
    bar.close()
    if errors:
        raise errors[0]
    return report
