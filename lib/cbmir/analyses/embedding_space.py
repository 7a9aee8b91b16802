"""Embedding-space study: kNN purity without same-case neighbours, cosine silhouette, and UMAP layouts.

- **kNN purity** of an image = the share of its k nearest images (cosine), **excluding every image of its own
  case**, that have its label; **chance** = the label's share among the other cases' images (what k neighbours
  drawn at random from the other cases would give on average). Both averaged over the query images, per label
  level (modality, region, label), with a cluster-bootstrap CI over the query cases.
- **Silhouette** (cosine, scikit-learn) per level over the images: +1 = tight, separated classes, 0 = classes
  overlap, < 0 = images closer to another class. It is computed over images, so many near-identical slices of
  one case raise it; unlike purity it has no same-case exclusion. It does not have to fall from modality to
  label the way purity tends to (coarser classes are also more spread out).
- **UMAP** 2-D (cosine, seeded) of a seeded sample of at most `max_points` images, the same rows for every model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from cbmir.analyses.classify import cluster_bootstrap
from cbmir.errors import CbmirError
from cbmir.manifest import LEVELS, row_labels
from cbmir.search import search


class EmbeddingSpaceError(CbmirError, ValueError):
    """Inputs of the embedding-space study that disagree."""


class NeighbourError(CbmirError, ValueError):
    """No image has a neighbour outside its own case."""


def level_labels(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """{"modality": ..., "region": ..., "label": ...}: each row's label at the three levels."""
    return {level: row_labels(manifest, level).astype(str) for level in LEVELS}


def sample_rows(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """All of 0..n-1, or a seeded sample of `max_points` of them, sorted."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _check(
    emb: np.ndarray, labels_by_level: Mapping[str, np.ndarray], cases: np.ndarray | None
) -> np.ndarray:
    n = len(emb)
    for level, labels in labels_by_level.items():
        if len(labels) != n:
            raise EmbeddingSpaceError(
                f"labels of level {level!r} have {len(labels)} entries for {n} embeddings"
            )
    cases = np.arange(n) if cases is None else pd.factorize(pd.Series(np.asarray(cases)))[0]
    if len(cases) != n:
        raise EmbeddingSpaceError(f"parameter 'cases' has {len(cases)} entries for {n} embeddings")
    return np.asarray(cases, dtype=np.int64)


def purity_chance(labels: np.ndarray, cases: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """Per query row: share of its label among the images of the other cases."""
    labels = pd.factorize(pd.Series(np.asarray(labels)))[0]
    cases = np.asarray(cases)
    n_label = np.bincount(labels)
    pair = pd.factorize(pd.Series(cases.astype(np.int64) * (labels.max() + 1) + labels))[0]
    n_pair = np.bincount(pair)  # images of (case, label)
    n_case = np.bincount(pd.factorize(pd.Series(cases))[0])
    case_codes = pd.factorize(pd.Series(cases))[0]
    q = np.asarray(query_rows)
    others = len(labels) - n_case[case_codes[q]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (n_label[labels[q]] - n_pair[pair[q]]) / others


def knn_purity(
    emb: np.ndarray,
    labels_by_level: Mapping[str, np.ndarray],
    cases: np.ndarray | None = None,
    k: int = 10,
    max_queries: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """kNN purity excluding same-case neighbours, and its chance value, per level (module docstring).

    Every image is in the index; the queries are all images or a seeded sample of `max_queries`. Columns:
    `level, classes, k, purity, ci_low, ci_high, chance, queries, cases` (cases = distinct query cases).
    """
    cases = _check(emb, labels_by_level, cases)
    n_case = np.bincount(cases)
    k = min(k, len(emb) - int(n_case.max()))
    if k < 1:
        raise NeighbourError("knn_purity: no image has a neighbour outside its own case (one case only?)")
    queries = sample_rows(len(emb), max_queries, seed)
    pos = search(emb, emb[queries], k, index_cases=cases, query_cases=cases[queries], progress=False)[1]
    out = []
    for level, labels in labels_by_level.items():
        labels = np.asarray(labels).astype(str)
        hits = (labels[pos] == labels[queries][:, None]).mean(axis=1)
        chance = purity_chance(labels, cases, queries)
        ci = cluster_bootstrap(
            cases[queries], lambda w, h=hits: {"purity": np.average(h, weights=w)}, n_boot, seed
        )
        out.append(
            {
                "level": level,
                "classes": len(np.unique(labels)),
                "k": k,
                "purity": float(hits.mean()),
                "ci_low": float(ci["ci_low"].iloc[0]),
                "ci_high": float(ci["ci_high"].iloc[0]),
                "chance": float(chance.mean()),
                "queries": len(queries),
                "cases": len(np.unique(cases[queries])),
            }
        )
    return pd.DataFrame(out)


def silhouettes(
    emb: np.ndarray, labels_by_level: Mapping[str, np.ndarray], max_points: int | None = 5000, seed: int = 0
) -> pd.DataFrame:
    """Cosine silhouette per level over all images or a seeded sample: `level, classes, silhouette, images`."""
    from sklearn.metrics import silhouette_score

    _check(emb, labels_by_level, None)
    rows = sample_rows(len(emb), max_points, seed)
    # the sample only in float64 (all of emb would take 13 GB at 1.6 M x 1000)
    x = np.asarray(emb[rows], dtype=np.float64)
    out = []
    for level, labels in labels_by_level.items():
        lab = np.asarray(labels).astype(str)[rows]
        n_classes = len(np.unique(lab))
        value = silhouette_score(x, lab, metric="cosine") if 1 < n_classes < len(rows) else np.nan
        out.append({"level": level, "classes": n_classes, "silhouette": float(value), "images": len(rows)})
    return pd.DataFrame(out)


def embedding_space_table(
    emb: np.ndarray,
    labels_by_level: Mapping[str, np.ndarray],
    cases: np.ndarray | None = None,
    *,
    k: int = 10,
    max_points: int | None = 5000,
    seed: int = 0,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Purity (with CI and chance) and silhouette per level, one table: `knn_purity` columns + `silhouette`."""
    purity = knn_purity(emb, labels_by_level, cases, k, max_points, seed, n_boot)
    sil = silhouettes(emb, labels_by_level, max_points, seed)
    return purity.merge(sil[["level", "silhouette"]], on="level", how="left")


def umap_2d(emb: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """A seeded 2-D UMAP (cosine) of the rows of `emb`: float [N, 2]."""
    import umap

    n = len(emb)
    if n < 3:
        raise EmbeddingSpaceError(f"umap_2d needs at least 3 points, got {n}")
    reducer = umap.UMAP(
        n_components=2, n_neighbors=min(n_neighbors, n - 1), metric="cosine", random_state=seed, n_jobs=1
    )
    return np.asarray(reducer.fit_transform(np.asarray(emb, dtype=np.float32)), dtype=np.float64)


def umap_frame(
    embeddings: Mapping[str, np.ndarray],
    labels_by_level: Mapping[str, np.ndarray],
    max_points: int | None = 5000,
    seed: int = 0,
    n_neighbors: int = 15,
) -> pd.DataFrame:
    """UMAP of every model on the same seeded sample of rows: `model, row, x, y, <one column per level>`.

    All matrices of `embeddings` (model -> [N, D]) must hold the same N rows in the same order.
    """
    sizes = {name: len(e) for name, e in embeddings.items()}
    if len(set(sizes.values())) != 1:
        raise EmbeddingSpaceError(f"umap_frame: the models' matrices have different numbers of rows: {sizes}")
    n = next(iter(sizes.values()))
    _check(np.empty((n, 0)), labels_by_level, None)
    rows = sample_rows(n, max_points, seed)
    parts = []
    for name, emb in embeddings.items():
        xy = umap_2d(np.asarray(emb)[rows], seed=seed, n_neighbors=n_neighbors)
        part = pd.DataFrame({"model": name, "row": rows, "x": xy[:, 0], "y": xy[:, 1]})
        for level, labels in labels_by_level.items():
            part[level] = np.asarray(labels).astype(str)[rows]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
