"""Rehearse the published-artefacts route at the paper's size: synthetic artefacts, import, every notebook.

Stages (each a child process, its wall time and peak RSS of the whole process tree polled with psutil):

1. `generate`: seeded synthetic artefacts in the authors' layout and formats (Zenodo 11196400): split CSVs
   with one-hot label columns, `datasets/<dataset>.csv`, `embeddings/<ModelClass>/<dataset>.h5` (one HDF5
   dataset per image named by its filepath, so nested groups), and for every model (as in the authors' record)
   `knn.csv` (test then val queries, 100 neighbour filepaths among train), `retrieval.csv` (P@1..99 by the
   paper's definition, computed here per query), `metadata.json`, `knn_classification.csv`,
   `linear_probing.csv` and `config.json`. Not written: `faiss.index` (the importer does not read it; it would add the train matrix again
   to the disk) and `knn_validation_val.csv` (its layout is not known). Shape at `--scale 1`: about 1.6 M rows,
   161 classes of 13 to ~226,000 images (modality -> region -> class), four datasets, three models (256, 512,
   768 dims).
2. `import`: `cbmir import-authors`. With `--drop-h5`, one model at a time, each model's HDF5 files and
   knn.csv deleted after its import; with `--drop-h5` and both stages, each model is written, imported and
   those files deleted before the next is written, so the disk holds one model's HDF5 files at most.
3. `check`: the authors' P@1..99 (their retrieval.csv) against our metric on each imported knn.csv.

`knn` (not in the default stages) rewrites only every model's knn.csv and retrieval.csv, for artefacts written
by an older version of this script.
4. `report`: every notebook of `configs/paper-published.yaml` through `cbmir report --only NOTEBOOK`, one child
   per notebook (per-model notebooks: one child for all models).

Results are appended to benchmarks/RESULTS.md (with the load average: the machine is shared) and kept as JSON
beside the artefacts. Everything is written under `--root` (default: cbmir-rehearsal-<scale> in the system temp folder), never in the
repository.

    python benchmarks/rehearse_paper_scale.py --scale 0.01
    python benchmarks/rehearse_paper_scale.py --scale 1 --drop-h5   # the full size; ~20 GB of disk at the peak
    python benchmarks/rehearse_paper_scale.py --scale 1 --models 9 --drop-h5   # nine models; ~46 GB at the peak
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
FULL_ROWS = 1_600_000
LARGEST, SMALLEST, N_CLASSES = 226_000, 13, 161
CHEST = [
    "No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
]  # fmt: skip
REGIONS = {
    "CT": ["abdomen", "lung", "head"],
    "MR": ["abdomen", "ankle", "brain", "hip", "knee", "shoulder", "spine"],
    "US": ["abdomen", "thyroid", "breast", "kidney"],
}
CHEST_DATASETS = (("nih14", 0.16), ("CheXpert", 0.28), ("mimic", 0.56))
# (authors' model class, dim, noise scale): noise relative to the class centre sets how separable classes are
MODELS = (("SAMViTB", 256, 2.2), ("BiomedCLIPVitB16_224", 512, 1.6), ("ViTB16", 768, 1.9))
# `--models 9`: the authors' nine model classes at their dimensions (the first three as above)
NINE_MODELS = (
    *MODELS, ("ViTMAEB", 768, 2.4), ("DINOv2ViTB14", 768, 1.5), ("MedSAMViTB", 256, 2.0), ("MedCLIP", 512, 2.0),
    ("ResNet50", 1000, 2.6), ("CLIPOpenAIViTL14", 768, 1.7),
)  # fmt: skip
K = 100
PROBE_COLUMNS = (
    "micro_roc_auc", "micro_f1", "macro_roc_auc", "macro_f1", "macro_precision", "macro_recall", "macro_accuracy",
)  # fmt: skip


# ------------------------------------------------------------------------------------------ generation
def class_sizes(scale: float) -> np.ndarray:
    """161 class sizes from ~226,000 down to 13 whose sum is about 1.6 M (times `scale`; at least 3 each)."""
    u = 1 - np.arange(N_CLASSES) / (N_CLASSES - 1)
    lo, hi = 0.1, 10.0
    for _ in range(60):  # bisect the exponent so that the sizes add up to FULL_ROWS
        p = (lo + hi) / 2
        total = (SMALLEST * (LARGEST / SMALLEST) ** (u**p)).sum()
        lo, hi = (p, hi) if total > FULL_ROWS else (lo, p)
    sizes = SMALLEST * (LARGEST / SMALLEST) ** (u**p)
    return np.maximum(3, np.round(sizes * scale)).astype(np.int64)


def label_names(rng: np.random.Generator) -> list[str]:
    """161 label paths: 15 chest X-ray findings, the rest spread over the modality/region pairs."""
    pairs = [(m, r) for m, regions in REGIONS.items() for r in regions]
    names = [f"XR/chest/{c}" for c in CHEST]
    for j in range(N_CLASSES - len(CHEST)):
        m, r = pairs[j % len(pairs)]
        names.append(f"{m}/{r}/finding_{j:03d}")
    order = rng.permutation(np.arange(1, N_CLASSES))  # the largest class is 'XR/chest/No Finding'
    return [names[0]] + [names[i] for i in order]


def build_manifest(scale: float, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """The synthetic manifest: filepath, dataset, split, modality, anatomic_region, label (one per row)."""
    rng = np.random.default_rng(seed)
    sizes = class_sizes(scale)
    names = label_names(rng)
    label = np.repeat(np.arange(N_CLASSES), sizes)
    splits = np.empty(len(label), dtype=object)
    start = 0
    for n in sizes:  # per class: 10 % test, 5 % val (at least one each), the rest train
        n_test, n_val = max(1, round(0.10 * n)), max(1, round(0.05 * n))
        part = np.array(["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val), dtype=object)
        splits[start : start + n] = part[rng.permutation(n)]
        start += n
    is_chest = np.array([names[c].startswith("XR/") for c in label])
    dataset = np.full(len(label), "radiology_ai", dtype=object)
    dataset[is_chest] = rng.choice(
        [d for d, _ in CHEST_DATASETS], size=int(is_chest.sum()), p=[p for _, p in CHEST_DATASETS]
    )
    order = rng.permutation(len(label))
    label, splits, dataset = label[order], splits[order], dataset[order]
    row = np.arange(len(label))
    filepaths = np.empty(len(label), dtype=object)
    for i, (c, d) in enumerate(zip(label, dataset, strict=True)):
        if d == "radiology_ai":
            filepaths[i] = f"radiology_ai/{names[c]}/{names[c].split('/')[0].lower()}{row[i]:07d}.png"
        elif d == "nih14":
            filepaths[i] = f"nih14/images_{row[i] % 12 + 1:03d}/images/{row[i]:08d}_000.png"
        elif d == "CheXpert":
            filepaths[i] = f"CheXpert/CheXpert-v1.0/train/patient{row[i]:07d}/study1/view1_frontal.jpg"
        else:
            filepaths[i] = f"mimic/files/p{10 + row[i] % 10}/p{row[i]:08d}/s{row[i]:08d}/{row[i]:08d}.jpg"
    parts = np.array([n.split("/") for n in names], dtype=object)
    frame = pd.DataFrame(
        {
            "filepath": filepaths,
            "dataset": dataset,
            "split": splits,
            "modality": parts[label, 0],
            "anatomic_region": parts[label, 1],
            "label": label,
        }
    )
    return frame, names


def write_schema_csv(path: Path, frame: pd.DataFrame, names: list[str]) -> None:
    """The paper's schema with one-hot label columns written as 0.0 / 1.0 (as the authors write them)."""
    onehot = []
    for c in range(len(names)):
        cells = ["0.0"] * len(names)
        cells[c] = "1.0"
        onehot.append(",".join(cells))
    header = ",".join(["filepath", "dataset", "split", "modality", "anatomic_region", *names])
    with open(path, "w") as fh:
        fh.write(header + "\n")
        cols = zip(frame["filepath"], frame["dataset"], frame["split"], frame["modality"],
                   frame["anatomic_region"], frame["label"], strict=True)  # fmt: skip
        fh.writelines(f"{f},{d},{s},{m},{r},{onehot[c]}\n" for f, d, s, m, r, c in cols)


def paper_retrieval(
    nb_labels: np.ndarray, q_labels: np.ndarray, counts: np.ndarray, n_max: int
) -> pd.DataFrame:
    """The authors' retrieval.csv by the paper's definition, written independently of cbmir.metrics:
    per query hits among the first min(N, n_c) / min(N, n_c); micro mean/std over queries, macro mean over
    classes of the per-class mean/std (pandas std, ddof 1)."""
    hits = np.cumsum(nb_labels == q_labels[:, None], axis=1)
    rows = []
    for n in range(1, n_max + 1):
        m = np.minimum(n, counts[q_labels])
        p = hits[np.arange(len(q_labels)), m - 1] / m
        frame = pd.DataFrame({"p": p, "c": q_labels})
        g = frame.groupby("c")["p"]
        rows.append((frame["p"].mean(), frame["p"].std(), g.mean().mean(), g.std().mean()))
    cols = ["micro_precision_mean", "micro_precision_std", "macro_precision_mean", "macro_precision_std"]
    return pd.DataFrame(rows, columns=cols)


def write_knn(folder: Path, frame: pd.DataFrame, seed: int, model: str, models=MODELS) -> int:
    """One model's `knn.csv` (test then val queries, K neighbour filepaths among train; neighbour j is a
    same-class train image with a probability falling with j), `metadata.json` (the index's filepaths) and
    `retrieval.csv` (P@1..K-1 of those neighbours by the paper's definition); returns the number of queries.
    Seeded per model, so the files can be rewritten without the HDF5 files (`--stages knn`)."""
    rng = np.random.default_rng([seed, [m for m, _, _ in models].index(model)])
    label, filepaths = frame["label"].to_numpy(), frame["filepath"].to_numpy()
    train = np.flatnonzero(frame["split"].to_numpy() == "train")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps(list(filepaths[train])))
    queries = np.concatenate([np.flatnonzero(frame["split"].to_numpy() == s) for s in ("test", "val")])
    by_class = pd.Series(train).groupby(label[train]).apply(lambda s: s.to_numpy())
    counts = np.bincount(label[train], minlength=N_CLASSES)
    q_lab = label[queries]
    same = rng.random((len(queries), K)) < np.linspace(0.85, 0.35, K)[None, :]
    nb = train[rng.integers(0, len(train), size=(len(queries), K))]
    for c in np.unique(q_lab):
        members = by_class[c]
        mask = same & (q_lab == c)[:, None]
        nb[mask] = members[rng.integers(0, len(members), size=int(mask.sum()))]
    with open(folder / "knn.csv", "w") as fh:
        fh.write(",".join(["query", *map(str, range(1, K + 1))]) + "\n")
        for lo in range(0, len(queries), 20_000):
            block = np.concatenate([queries[lo : lo + 20_000, None], nb[lo : lo + 20_000]], axis=1)
            fh.writelines(",".join(filepaths[r]) + "\n" for r in block)
    n_test = int((frame["split"] == "test").sum())
    retrieval = paper_retrieval(label[nb[:n_test]], q_lab[:n_test], counts, K - 1)
    retrieval.to_csv(folder / "retrieval.csv")  # with the index column, as the authors write it
    print(f"{model}/knn.csv: {len(queries)} queries", flush=True)
    return len(queries)


def write_tables(root: Path, scale: float, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """The split CSVs and the four `datasets/<dataset>.csv` files every model shares."""
    frame, names = build_manifest(scale, seed)
    exp = root / "experiments" / "chexpert_mimic_nih14_radimagenet"
    exp.mkdir(parents=True, exist_ok=True)
    (root / "datasets").mkdir(exist_ok=True)
    for split in ("train", "val", "test"):
        write_schema_csv(exp / f"{split}.csv", frame[frame["split"] == split], names)
    for dataset, file in (("nih14", "nih14"), ("mimic", "mimic"), ("radiology_ai", "radimagenet"),
                          ("CheXpert", "CheXpert")):  # fmt: skip
        write_schema_csv(root / "datasets" / f"{file}.csv", frame[frame["dataset"] == dataset], names)
    print(f"manifest: {len(frame)} rows, {N_CLASSES} classes", flush=True)
    return frame, names


def write_model(root: Path, frame: pd.DataFrame, seed: int, model: str, models=MODELS) -> int:
    """One model's HDF5 files (one 1-D float32 dataset per image, named by its filepath, so nested groups),
    its experiment folder and its knn.csv; seeded per model, so models can be written one at a time (and
    imported, and their HDF5 files deleted, before the next: `--drop-h5`). Returns the knn.csv queries."""
    import h5py

    index = [m for m, _, _ in models].index(model)
    _, dim, noise = models[index]
    rng = np.random.default_rng([seed, 1_000 + index])
    exp = root / "experiments" / "chexpert_mimic_nih14_radimagenet"
    label = frame["label"].to_numpy()
    filepaths = frame["filepath"].to_numpy()
    centres = rng.normal(size=(N_CLASSES, dim)).astype(np.float32) / np.sqrt(dim)
    folder = root / "embeddings" / model
    folder.mkdir(parents=True, exist_ok=True)
    for dataset in ("nih14", "mimic", "radiology_ai", "CheXpert"):
        rows = np.flatnonzero(frame["dataset"].to_numpy() == dataset)
        t0 = time.time()
        with h5py.File(folder / f"{dataset}.h5", "w") as handle:
            # h5py's low-level calls: the same file as `create_dataset(filepath, data=vector)` (nested
            # groups, one 1-D float32 dataset per image), four times faster to write
            lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
            lcpl.set_create_intermediate_group(True)
            space, dtype = h5py.h5s.create_simple((dim,)), h5py.h5t.IEEE_F32LE
            for lo in range(0, len(rows), 50_000):
                part = rows[lo : lo + 50_000]
                x = centres[label[part]] + rng.normal(scale=noise / np.sqrt(dim), size=(len(part), dim))
                x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
                for r, vec in zip(part, x, strict=True):
                    node = h5py.h5d.create(handle.id, filepaths[r].encode(), dtype, space, lcpl=lcpl)
                    node.write(h5py.h5s.ALL, h5py.h5s.ALL, vec)
        print(f"{model}/{dataset}.h5: {len(rows)} vectors in {time.time() - t0:.0f} s", flush=True)
    mdir = exp / model
    mdir.mkdir(exist_ok=True)
    (mdir / "config.json").write_text(
        json.dumps({"model": model, "embeddings": f"embeddings/{model}", "k": K})
    )
    base = {"SAMViTB": 0.80, "BiomedCLIPVitB16_224": 0.86, "ViTB16": 0.84}.get(model, 0.82)
    for table in ("knn_classification", "linear_probing"):
        values = np.clip(base + rng.normal(scale=0.03, size=len(PROBE_COLUMNS)), 0, 1)
        pd.DataFrame([dict(zip(PROBE_COLUMNS, values, strict=True))]).to_csv(mdir / f"{table}.csv")
    return write_knn(mdir, frame, seed, model, models)


def shape(root: Path, frame: pd.DataFrame, models, n_queries: int) -> dict:
    """What was generated (recorded with the timings)."""
    label = frame["label"].to_numpy()
    return {
        "rows": len(frame),
        "classes": N_CLASSES,
        "class sizes": f"{int(np.bincount(label).min())}..{int(np.bincount(label).max())}",
        "splits": frame["split"].value_counts().to_dict(),
        "datasets": frame["dataset"].value_counts().to_dict(),
        "models": {m: d for m, d, _ in models},
        "knn.csv queries": n_queries,
        "knn.csv models": [m for m, _, _ in models],
        "artefact bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
    }


def generate(root: Path, scale: float, seed: int, models=MODELS) -> dict:
    """Write the synthetic artefacts of `models` ((class, dim, noise) ...) under `root`; returns their shape."""
    frame, _ = write_tables(root, scale, seed)
    n_queries = 0
    for model, _, _ in models:
        n_queries = write_model(root, frame, seed, model, models)
    return shape(root, frame, models, n_queries)


# ------------------------------------------------------------------------------------------ measuring
def measured(cmd: list[str], log: Path, env: dict | None = None, interval: float = 0.5) -> dict:
    """Run `cmd`, polling the RSS summed over its process tree; wall time, peak RSS, exit code, load."""
    import psutil

    load0 = os.getloadavg()
    t0 = time.time()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        peak, peak_one = 0, 0
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [parent, *parent.children(recursive=True)]
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                peak, peak_one = max(peak, sum(rss)), max(peak_one, max(rss, default=0))
            except psutil.Error:
                pass
            time.sleep(interval)
    return {
        "command": " ".join(cmd),
        "commit": commit(),
        "rc": proc.returncode,
        "wall_s": round(time.time() - t0, 1),
        "peak_rss_tree_gib": round(peak / 2**30, 2),
        "peak_rss_one_process_gib": round(peak_one / 2**30, 2),
        "load_before": [round(x, 2) for x in load0],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def commit() -> str:
    """The repository's commit (with '+changes' when the working tree differs), recorded with each stage."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "lib", "notebooks", "configs"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return head.stdout.strip() + ("+changes" if dirty else "")


def cbmir(*args: str) -> list[str]:
    return [PYTHON, "-c", "import sys; from cbmir.cli import main; sys.exit(main())", *args]


def write_config(root: Path, models: list[str]) -> Path:
    """configs/paper-published.yaml with this rehearsal's work folder and the models that were imported."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "paper-published.yaml").read_text())
    cfg["name"] = "paper-rehearsal"
    cfg["description"] = (
        f"SYNTHETIC REHEARSAL, not data: seeded Gaussian-cluster embeddings in the authors' file formats at the "
        f"paper's class structure (161 labels; written by benchmarks/rehearse_paper_scale.py), imported as if "
        f"published, for {len(models)} models. It measures run time and memory of the published-artefacts route; "
        f"its numbers say nothing about any model. Neighbours: {cfg.get('neighbours', 'search')} (search index "
        f"where needed: index_type {cfg.get('index_type', 'flat')})."
    )
    cfg["manifest"] = str(root / "work" / "manifest.csv")
    cfg["work_dir"] = str(root / "work")
    cfg["data_root"] = str(root / "no-images")
    cfg["models"] = models
    cfg["paper_setup"] = False  # synthetic vectors: the article's printed numbers are not comparable
    path = root / "configs" / "paper-rehearsal.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def check_precision(root: Path, models=MODELS) -> dict:
    """Our modified P@1..99 on each imported knn.csv table against the authors' retrieval.csv (max |diff| over
    the models)."""
    from cbmir.authors import MODEL_PRESETS, read_reference
    from cbmir.config import slug
    from cbmir.manifest import read_manifest, row_labels
    from cbmir.metrics.retrieval import label_matrices, micro_macro, precision_at_n
    from cbmir.search import Neighbours

    t0 = time.time()
    manifest = read_manifest(root / "work" / "manifest.csv")
    labels_of_rows = row_labels(manifest, "label")
    out = {"models": [], "queries": 0, "max |micro diff| P@1..99": 0.0, "max |macro diff| P@1..99": 0.0}
    for model, _, _ in models:
        preset = slug(MODEL_PRESETS[model])
        path = root / "work" / "neighbours" / f"{preset}--authors-knn.npz"
        if not path.is_file():
            continue
        nb = Neighbours.load(path)
        test = manifest["split"].to_numpy()[nb.query_rows] == "test"
        nb = Neighbours(nb.query_rows[test], nb.ids[test], nb.scores[test], nb.index_rows)
        labels, q, counts, _ = label_matrices(nb, labels_of_rows, max_n=K - 1)
        micro, macro = micro_macro(precision_at_n(labels, q, counts), q)
        theirs = read_reference(root / "work" / "reference" / f"{preset}.csv", "retrieval")
        out["models"].append(preset)
        out["queries"] = int(test.sum())
        for key, ours, col in (
            ("micro", micro, "micro_precision_mean"),
            ("macro", macro, "macro_precision_mean"),
        ):
            diff = float(np.abs(ours - theirs[col].to_numpy()).max())
            out[f"max |{key} diff| P@1..99"] = max(out[f"max |{key} diff| P@1..99"], diff)
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.01, help="fraction of the paper's 1.6 M rows")
    ap.add_argument(
        "--root",
        help="where everything is written (default: cbmir-rehearsal-<scale> in the system temp folder)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--models", type=int, choices=(3, 9), default=3, help="3 (dims 256, 512, 768) or the authors' nine"
    )
    ap.add_argument(
        "--stages",
        default="generate,import,check,report",
        help="comma-separated subset, or 'none' to append what earlier runs recorded",
    )
    ap.add_argument("--notebooks", nargs="+", help="only these notebooks of the config")
    ap.add_argument(
        "--drop-h5",
        action="store_true",
        help="delete each model's HDF5 files and knn.csv after its import (disk)",
    )
    ap.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args()
    root = Path(args.root or Path(tempfile.gettempdir()) / f"cbmir-rehearsal-{args.scale:g}")
    root.mkdir(parents=True, exist_ok=True)
    log = root / "rehearsal.log"
    record_path = root / "rehearsal.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"stages": {}}
    record.update(scale=args.scale, seed=args.seed, root=str(root))
    stages = (
        [] if args.stages == "none" else args.stages.split(",")
    )  # none: record what earlier runs measured
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}  # fmt: skip

    def save() -> None:
        record_path.write_text(json.dumps(record, indent=2, default=str))

    def stage(name: str, cmd: list[str]) -> dict:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        result = measured(cmd, log, env)
        record["stages"][name] = result
        save()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {result}", flush=True)
        return result

    def record_shape() -> None:
        """The shape the last generate stage printed (its `SUMMARY` line in the log)."""
        for line in log.read_text().splitlines()[::-1]:
            if line.startswith("SUMMARY "):
                record["shape"] = json.loads(line[len("SUMMARY ") :])
                break
        save()

    models_name = "MODELS" if args.models == 3 else "NINE_MODELS"
    models = MODELS if args.models == 3 else NINE_MODELS
    artefacts = root / "artefacts"
    exp = artefacts / "experiments" / "chexpert_mimic_nih14_radimagenet"

    def import_one(model: str) -> None:
        """Import one model, the others parked outside the tree; its HDF5 files and knn.csv (1.2 GB at the
        paper's size) deleted after a good import: its store and neighbour table hold them."""
        parked = root / "parked"
        others = [m for m, _, _ in models if m != model]
        moves = [
            (base / m, parked / base.name / m) for m in others for base in (artefacts / "embeddings", exp)
        ]
        for src, dst in moves:
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                src.rename(dst)
        try:
            result = stage(
                f"import {model}",
                cbmir("import-authors", str(artefacts), "--out", str(root / "work"), "--no-progress"),
            )
            if result["rc"] == 0:  # the store and the neighbour table hold them now
                for path in [*(artefacts / "embeddings" / model).glob("*.h5"), exp / model / "knn.csv"]:
                    path.unlink(missing_ok=True)
        finally:
            for src, dst in moves:
                if dst.exists():
                    dst.rename(src)

    if "generate" in stages and "import" in stages and args.drop_h5:
        # the disk never holds more than one model's HDF5 files: write one model, import it, delete its HDF5
        # files, then the next (at the paper's size the nine models' HDF5 files alone are ~46 GB)
        shutil.rmtree(artefacts, ignore_errors=True)
        frame_file = root / "frame.parquet"
        code = (
            "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; "
            "from rehearse_paper_scale import *; "
            f"frame, _ = write_tables(Path({str(artefacts)!r}), {args.scale}, {args.seed}); "
            f"frame.to_parquet({str(frame_file)!r})"
        )
        stage("generate tables", [PYTHON, "-c", code])
        for model, _, _ in models:
            code = (
                "import json, sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; "
                "import pandas as pd; from rehearse_paper_scale import *; "
                f"frame = pd.read_parquet({str(frame_file)!r}); "
                f"n = write_model(Path({str(artefacts)!r}), frame, {args.seed}, {model!r}, {models_name}); "
                f"print('SUMMARY', json.dumps(shape(Path({str(artefacts)!r}), frame, {models_name}, n), "
                "default=str))"
            )
            stage(f"generate {model}", [PYTHON, "-c", code])
            import_one(model)
        record_shape()
        stages = [s for s in stages if s not in ("generate", "import")]
    if "generate" in stages:
        shutil.rmtree(artefacts, ignore_errors=True)
        code = (
            "import json, sys; sys.path.insert(0, 'benchmarks'); from rehearse_paper_scale import *; "
            f"print('SUMMARY', json.dumps(generate(__import__('pathlib').Path({str(artefacts)!r}), "
            f"{args.scale}, {args.seed}, {models_name}), default=str))"
        )
        stage("generate", [PYTHON, "-c", code])
        record_shape()
    if "knn" in stages:  # rewrite every model's knn.csv and retrieval.csv (artefacts of an older generator)
        code = (
            "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; "
            "from rehearse_paper_scale import *; "
            f"frame, _ = build_manifest({args.scale}, {args.seed}); "
            f"[write_knn(Path({str(artefacts)!r}) / 'experiments' / 'chexpert_mimic_nih14_radimagenet' / m, "
            f"frame, {args.seed}, m, {models_name}) for m, _, _ in {models_name}]"
        )
        stage("knn", [PYTHON, "-c", code])
        record.setdefault("shape", {})["knn.csv models"] = [m for m, _, _ in models]
        save()
    if "import" in stages and not args.drop_h5:
        jobs = str(
            min(2, os.cpu_count() or 1)
        )  # one model per core: reading the HDF5 files is single-threaded
        stage(
            "import",
            cbmir(
                "import-authors", str(artefacts), "--out", str(root / "work"), "--no-progress", "--jobs", jobs
            ),
        )
    elif "import" in stages:
        for model, _, _ in models:  # one model at a time, so the disk never holds every HDF5 file and store
            import_one(model)
    if "check" in stages:
        record["precision check"] = check_precision(root, models)
        save()
        print(record["precision check"], flush=True)
    if "report" in stages:
        from cbmir.authors import MODEL_PRESETS
        from cbmir.config import load_config

        presets = [MODEL_PRESETS[m] for m, _, _ in models]
        config = write_config(root, presets)
        notebooks = args.notebooks or [n.name for n in load_config(config).notebooks]
        for name in notebooks:
            stage(
                f"report {name}",
                cbmir(
                    "report",
                    "--config",
                    str(config),
                    "--only",
                    name,
                    "--no-html",
                ),  # reports/ and figures/ land beside the config, under --root (work_dir is absolute)
            )
        # the site from every notebook's latest run (also after a run of only some notebooks)
        stage("site", cbmir("site", "--config", str(config), "--no-check"))
    if not args.no_results:
        lines = [f"- shape: {json.dumps(record.get('shape', {}), default=str)}"]
        for name, r in record["stages"].items():
            status = "ok" if r["rc"] == 0 else f"FAILED (exit {r['rc']})"
            lines.append(
                f"- {name}: {status}, {r['wall_s']:.0f} s wall, peak RSS {r['peak_rss_tree_gib']} GiB "
                f"(process tree; largest process {r['peak_rss_one_process_gib']} GiB), load average "
                f"{r['load_before'][0]} before / {r['load_after'][0]} after"
                + (f", at {r['commit']}" if r.get("commit") else "")
            )
        if "precision check" in record:
            lines.append(f"- authors' P@1..99 vs ours on their knn.csv: {record['precision check']}")
        if record.get("note"):
            lines.append(f"- note: {record['note']}")
        loads = [x for r in record["stages"].values() for x in (r["load_before"][0], r["load_after"][0])]
        busy = max(loads, default=0.0) > (os.cpu_count() or 1)  # more runnable work than cores at some point
        lines.append(
            f"- highest 1-min load average {max(loads, default=0.0):.1f} on {os.cpu_count()} cores: "
            + (
                "timings measured on a shared machine, not quiet-machine figures"
                if busy
                else "a quiet machine"
            )
        )
        append_results(
            f"rehearse_paper_scale: published-artefacts route at scale {args.scale:g}",
            " ".join(["python", *sys.argv]),
            lines,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
