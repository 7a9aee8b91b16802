"""The pipeline as the notebooks see it: one `Context` per notebook run, with cached stages.

A notebook does `ctx = Context.open(config, quick=quick, out_root=out_root)`; then `ctx.embeddings(model)`
extracts or reuses the store, `ctx.neighbours(model)` searches or reuses the neighbour table, and
`ctx.save_figure` / `ctx.save_table` write the outputs where the config says. Each stage reads only the files
of the stage before it (DESIGN.md §4).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cbmir.config import ReportConfig, load_config, slug
from cbmir.manifest import read_manifest, row_labels, split_rows


@dataclass
class Context:
    cfg: ReportConfig
    manifest: pd.DataFrame

    @classmethod
    def open(
        cls,
        config: str | Path = "configs/radmini.yaml",
        quick: bool = False,
        out_root: str | Path | None = None,
    ) -> Context:
        cfg = load_config(config, quick=quick, out_root=out_root)
        manifest = read_manifest(cfg.manifest)
        if cfg.max_per_class:
            manifest = subsample_per_class(manifest, cfg.max_per_class, seed=cfg.seed)
        return cls(cfg, manifest)

    # ---- labels and rows -------------------------------------------------------------------------
    def labels(self, level: str = "label") -> np.ndarray:
        """The label of every manifest row at `level` (modality, region or label)."""
        return row_labels(self.manifest, level)

    def rows(self, split: str) -> np.ndarray:
        return split_rows(self.manifest, split)

    def image_path(self, row: int, thumb: bool = False) -> Path:
        root = self.cfg.thumbs_root if thumb and self.cfg.thumbs_root else self.cfg.data_root
        path = root / self.manifest["filepath"].iloc[row]
        return (
            path if path.exists() or not thumb else self.cfg.data_root / self.manifest["filepath"].iloc[row]
        )

    # ---- stage 2: embeddings ---------------------------------------------------------------------
    def store_dir(self, model: str) -> Path:
        return self.cfg.work_dir / "embeddings" / slug(model)

    def embeddings(self, model: str, redo: bool = False):
        """The model's embedding store over the whole manifest: extracted once, then reused."""
        from cbmir.embeddings import extract_embeddings

        return extract_embeddings(
            self.manifest,
            self.cfg.data_root,
            model,
            self.store_dir(model),
            batch_size=self.cfg.batch_size,
            bf16=self.cfg.bf16,
            redo=redo,
            checkpoint=self.cfg.checkpoints.get(model),
        )

    def vectors(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """(the store's embedding matrix, the store row of every manifest row or -1 where its image failed)."""
        store = self.embeddings(model)
        mapping = np.full(len(self.manifest), -1, dtype=np.int64)
        present = np.flatnonzero(self.manifest["filepath"].isin(set(store.ids)).to_numpy())
        mapping[present] = store.rows_for(self.manifest["filepath"].iloc[present].tolist())
        return store.embeddings, mapping

    def searchable_rows(self, model: str, split: str) -> np.ndarray:
        """Manifest rows of `split` that have an embedding (images that failed to load are left out)."""
        _, mapping = self.vectors(model)
        rows = self.rows(split)
        return rows[mapping[rows] >= 0]

    # ---- stage 3: neighbours ---------------------------------------------------------------------
    def neighbours_path(self, model: str, query_split: str = "test", index_split: str = "train") -> Path:
        return self.cfg.work_dir / "neighbours" / f"{slug(model)}--{query_split}-in-{index_split}.npz"

    @property
    def search_settings(self) -> dict:
        """The config's search index: `index_type` plus its builder parameters (keyword arguments of search)."""
        return {"index_type": self.cfg.index_type, **self.cfg.index_params}

    def neighbours(
        self, model: str, query_split: str = "test", index_split: str = "train", redo: bool = False
    ):
        """Top-k neighbours (manifest rows) of every `query_split` row among the `index_split` rows."""
        from cbmir.index import Neighbours, search_rows

        path = self.neighbours_path(model, query_split, index_split)
        emb, mapping = self.vectors(model)
        index_rows = self.searchable_rows(model, index_split)
        query_rows = self.searchable_rows(model, query_split)
        key = self._neighbours_key(model, index_rows, query_rows)
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists() and not redo and json.loads(meta.read_text()).get("key") == key:
            return Neighbours.load(path)
        k = min(self.cfg.k, len(index_rows))
        nb = search_rows(emb, index_rows, query_rows, k=k, embedding_rows=mapping, **self.search_settings)
        nb.save(path)
        meta.write_text(json.dumps({"key": key, "k": k, **self.search_settings}) + "\n")
        return nb

    def query(self, image: str | Path, model: str, k: int = 10, index_split: str = "train") -> pd.DataFrame:
        """Query by example: the top-k `index_split` images for one image file (PNG, JPEG or DICOM)."""
        from cbmir.images import load_image
        from cbmir.index import search
        from cbmir.models import load_encoder

        encoder = load_encoder(model, checkpoint=self.cfg.checkpoints.get(model))
        query = encoder.embed_images([load_image(image)]).numpy()
        emb, mapping = self.vectors(model)
        index_rows = self.searchable_rows(model, index_split)
        scores, pos = search(
            np.asarray(emb[mapping[index_rows]]), query, k=min(k, len(index_rows)), progress=False
        )
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
        """Changes whenever the store, the rows or the search settings change (then the table is redone)."""
        h = hashlib.sha256((self.store_dir(model) / "provenance.json").read_bytes())
        fp = self.manifest["filepath"].to_numpy().astype(str)
        for rows in (index_rows, query_rows):
            h.update("\n".join(fp[rows]).encode() + b"\x00")
        h.update(f"{self.cfg.k}|{json.dumps(self.search_settings, sort_keys=True)}".encode())
        return h.hexdigest()

    # ---- outputs ---------------------------------------------------------------------------------
    def save_figure(self, fig, name: str, images: bool = False) -> Path:
        """Write the figure as PNG and SVG under figures/<config>/; return the PNG path (`images`: galleries)."""
        from cbmir.plots import save_figure

        return save_figure(fig, self.cfg.figures_dir / name, images=images)

    def save_table(self, df: pd.DataFrame, name: str, digits: int = 3) -> pd.DataFrame:
        """Store `df` unrounded as reports/<config>/tables/<name>.csv; return a copy rounded for reading."""
        path = self.cfg.reports_dir / "tables" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        return df.round(digits)


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
