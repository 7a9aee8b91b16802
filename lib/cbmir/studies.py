"""The report's analyses, one function each: they take arrays and return tidy DataFrames.

Retrieval numbers always come from `cbmir.metrics`; this module only chooses what to compute (label
level, index subsample, query subset) and shapes the result for a table or a figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cbmir import metrics
from cbmir.manifest import LEVELS, label_columns, row_labels
from cbmir.search import Neighbours, search_rows
from cbmir.store import ManifestVectors

PAPER_NS = (1, 3, 5, 10)
# Published headline of Denner et al. (arXiv 2403.06567, Table 3): BiomedCLIP, micro P@N on their 4 datasets.
PAPER_BIOMEDCLIP_MICRO = {1: 0.594, 3: 0.590, 5: 0.588, 10: 0.583}


# ---- data --------------------------------------------------------------------------------------------
def dataset_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per dataset, split, modality, anatomic region and label (one row per combination)."""
    df = manifest[["dataset", "split", "modality", "anatomic_region"]].copy()
    df["label"] = row_labels(manifest, "label")
    return (
        df.value_counts()
        .rename("images")
        .reset_index()
        .sort_values(["dataset", "label", "split"], ignore_index=True)
    )


def counts_by(manifest: pd.DataFrame, column: str) -> pd.DataFrame:
    """Images per `column` value and split, wide (one column per split plus a total)."""
    values = row_labels(manifest, "label") if column == "label" else manifest[column]
    table = pd.crosstab(pd.Series(values, name=column), manifest["split"])
    table = table.reindex(columns=[s for s in ("train", "val", "test") if s in table.columns])
    table["total"] = table.sum(axis=1)
    return table.sort_values("total", ascending=False).reset_index()


def sample_rows(
    manifest: pd.DataFrame, by: str = "modality", per_group: int = 6, seed: int = 0
) -> dict[str, list[int]]:
    """A seeded sample of up to `per_group` rows of each `by` group, spread over its labels: {group: rows}."""
    rng = np.random.default_rng(seed)
    labels = row_labels(manifest, "label")
    rows: dict[str, list[int]] = {}
    for name, group in manifest.groupby(by, sort=True):
        idx = group.index.to_numpy()
        order = rng.permutation(len(idx))
        # round-robin over labels so each group shows its variety
        by_label: dict[str, list[int]] = {}
        for i in idx[order]:
            by_label.setdefault(labels[i], []).append(int(i))
        picked: list[int] = []
        while len(picked) < per_group and any(by_label.values()):
            for lab in sorted(by_label):
                if by_label[lab] and len(picked) < per_group:
                    picked.append(by_label[lab].pop(0))
        rows[str(name)] = picked
    return rows


# ---- embeddings --------------------------------------------------------------------------------------
def similarity_pairs(
    emb: np.ndarray, labels: np.ndarray, max_pairs: int = 20000, seed: int = 0
) -> pd.DataFrame:
    """Cosine similarity of random pairs of rows, marked same or different label."""
    rng = np.random.default_rng(seed)
    n = len(emb)
    a, b = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
    keep = a != b
    a, b = a[keep], b[keep]
    sims = np.einsum("ij,ij->i", emb[a], emb[b])
    return pd.DataFrame(
        {"similarity": sims, "pair": np.where(labels[a] == labels[b], "same label", "different label")}
    )


def embedding_summary(store) -> pd.DataFrame:
    """One row: rows, dimension, failed images, the range of row norms, and the extraction speed."""
    emb = np.asarray(store.embeddings)
    norms = np.linalg.norm(emb, axis=1)
    prov = store.provenance
    seconds = prov.get("seconds")
    return pd.DataFrame(
        [
            {
                "model": prov.get("spec"),
                "images": len(emb),
                "dimension": emb.shape[1],
                "failed": len(store.failed),
                "min norm": norms.min(),
                "max norm": norms.max(),
                "seconds": seconds,
                "images/s": len(emb) / seconds if seconds else np.nan,
                "device": prov.get("device"),
                "bf16": prov.get("bf16"),
            }
        ]
    )


def provenance_table(store) -> pd.DataFrame:
    """The store's provenance as a two-column table (nested values flattened to `key.subkey`)."""
    flat = pd.json_normalize(store.provenance, sep=".").T.reset_index()
    flat.columns = ["field", "value"]
    return flat


# ---- retrieval ---------------------------------------------------------------------------------------
def per_query_precision(
    nb: Neighbours, labels: np.ndarray, index_rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(modified P@N for N = 1..K of every query [Q, K], query class codes [Q]); NaN rows where n_c = 0."""
    nb_labels, q, counts, _ = metrics.label_matrices(nb, labels, index_rows, max_n=nb.k)
    return metrics.precision_at_n(nb_labels, q, counts), q


def retrieval_curves(
    nb: Neighbours,
    labels: np.ndarray,
    index_rows: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Micro and macro P@N (N = 1..K), mAP and hit rate, with seeded bootstrap 95 % intervals over queries."""
    curves = metrics.retrieval_metrics(nb, labels, index_rows, max_n=nb.k)
    per_query, q = per_query_precision(nb, labels, index_rows)
    for kind in ("micro", "macro"):
        ci = metrics.bootstrap_ci(per_query, q, average=kind, n_boot=n_boot, seed=seed)
        curves[f"{kind}_lo"], curves[f"{kind}_hi"] = ci["low"].to_numpy(), ci["high"].to_numpy()
    return curves


def paper_table(curves: pd.DataFrame, ns: Sequence[int] = PAPER_NS) -> pd.DataFrame:
    """The paper's layout: one row, columns micro/macro P@1, 3, 5, 10."""
    part = curves.set_index("N")
    return pd.DataFrame(
        [{f"{kind} P@{n}": part.loc[n, kind] for kind in ("micro", "macro") for n in ns if n in part.index}]
    )


def breakdown(nb: Neighbours, manifest: pd.DataFrame, by: str, ns: Sequence[int] = PAPER_NS) -> pd.DataFrame:
    """Micro and macro P@N of the queries in each `by` group (dataset, modality, ...), full-label hits."""
    labels = row_labels(manifest, "label")
    groups = manifest[by].to_numpy()[nb.query_rows]
    out = []
    for g in sorted(set(groups)):
        sel = groups == g
        sub = Neighbours(nb.query_rows[sel], nb.ids[sel], nb.scores[sel], nb.index_rows)
        res = metrics.retrieval_metrics(sub, labels, max_n=min(max(ns), nb.k)).set_index("N")
        row = {by: g, "queries": res.attrs["n_queries"]}
        row.update(
            {f"{kind} P@{n}": res.loc[n, kind] for kind in ("micro", "macro") for n in ns if n in res.index}
        )
        out.append(row)
    return pd.DataFrame(out)


def per_class(nb: Neighbours, manifest: pd.DataFrame, ns: Sequence[int] = PAPER_NS) -> pd.DataFrame:
    """P@N per query class (mean over that class's queries), with its query and index image counts."""
    return metrics.per_class_precision(nb, row_labels(manifest, "label"), ns=[n for n in ns if n <= nb.k])


def gallery_queries(nb: Neighbours, labels: np.ndarray, n: int = 8, seed: int = 0) -> list[int]:
    """Positions in `nb` of up to `n` queries, at most one per class first (seeded)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(nb.query_rows))
    seen: set[str] = set()
    first, rest = [], []
    for pos in order:
        lab = labels[nb.query_rows[pos]]
        (rest if lab in seen else first).append(int(pos))
        seen.add(lab)
    return (first + rest)[:n]


# ---- index size --------------------------------------------------------------------------------------
def stratified_subsample(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Positions keeping about `fraction` of every class (at least one image of each), sorted."""
    if not 0 < fraction <= 1:
        raise ValueError(f"parameter 'fraction' = {fraction} must be in (0, 1]")
    keep = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        m = max(1, int(round(fraction * len(pos))))
        keep.append(rng.choice(pos, size=m, replace=False))
    return np.sort(np.concatenate(keep))


def index_size_curve(
    emb: np.ndarray | ManifestVectors,
    labels: np.ndarray,
    index_rows: np.ndarray,
    query_rows: np.ndarray,
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    repeats: int = 5,
    ns: Sequence[int] = (1, 5, 10),
    k: int = 100,
    seed: int = 0,
    embedding_rows: np.ndarray | None = None,
    search_settings: dict | None = None,
) -> pd.DataFrame:
    """Micro and macro P@N against index size: stratified random subsamples of the index, repeated.

    `emb` is a model's `ManifestVectors`, or an array whose rows `embedding_rows` maps manifest rows to (None:
    one row per manifest row); `index_rows` and `query_rows` are manifest rows; `search_settings` (`index_type` and its parameters) go to `search_rows`.
    """
    rng = np.random.default_rng(seed)
    out = []
    for fraction in fractions:
        for rep in range(repeats if fraction < 1 else 1):
            sub = index_rows[stratified_subsample(labels[index_rows], fraction, rng)]
            nb = search_rows(
                emb,
                sub,
                query_rows,
                k=min(k, len(sub)),
                embedding_rows=embedding_rows,
                progress=False,
                **(search_settings or {}),
            )
            per_query, q = per_query_precision(nb, labels, sub)
            micro, macro = metrics.micro_macro(per_query, q)
            for n in ns:
                if n <= per_query.shape[1]:
                    out.append(
                        {
                            "fraction": fraction,
                            "index images": len(sub),
                            "repeat": rep,
                            "N": n,
                            "micro": micro[n - 1],
                            "macro": macro[n - 1],
                        }
                    )
    return pd.DataFrame(out)


# ---- embedding space ---------------------------------------------------------------------------------
def sample_present(vectors: ManifestVectors, max_points: int, seed: int = 0) -> np.ndarray:
    """Manifest rows that have an embedding: all, or a seeded sample of `max_points`, sorted."""
    rows = vectors.present()
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_points, replace=False))
    return rows


def embedding_space_scores(emb: np.ndarray, manifest: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """Cosine silhouette and leave-one-out kNN purity (share of the k nearest with the same label) per level."""
    from sklearn.metrics import silhouette_score

    rows = np.arange(len(emb))
    nb = search_rows(emb, rows, rows, k=min(k, len(rows) - 1), exclude_self=True, progress=False)
    out = []
    for level in LEVELS:
        labels = row_labels(manifest, level)
        n_classes = len(np.unique(labels))
        sil = silhouette_score(emb, labels, metric="cosine") if 1 < n_classes < len(emb) else np.nan
        purity = (labels[nb.ids] == labels[nb.query_rows][:, None]).mean()
        out.append(
            {
                "level": level,
                "classes": n_classes,
                "silhouette (cosine)": sil,
                f"kNN purity (k={nb.k})": purity,
            }
        )
    return pd.DataFrame(out)


def umap_2d(emb: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """A seeded 2D UMAP of the embeddings (cosine metric)."""
    import umap

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, len(emb) - 1),
        metric="cosine",
        random_state=seed,
        n_jobs=1,
    )
    return reducer.fit_transform(emb)


# ---- anatomy versus pathology ------------------------------------------------------------------------
def level_precision(nb: Neighbours, manifest: pd.DataFrame, ns: Sequence[int] = PAPER_NS) -> pd.DataFrame:
    """Micro and macro P@N when a hit must match the modality, the modality and region, or the full label."""
    levels = metrics.retrieval_metrics_by_level(nb, manifest, max_n=min(max(ns), nb.k))
    return levels[levels["N"].isin(ns)].reset_index(drop=True)


def pathology_given_anatomy(
    nb: Neighbours, manifest: pd.DataFrame, ns: Sequence[int] = PAPER_NS
) -> pd.DataFrame:
    """Among the first N neighbours that match the query's modality and region, the share with its full label.

    Averaged over queries with at least one anatomy-correct neighbour in the first N (their number is given).
    """
    region, label = row_labels(manifest, "region"), row_labels(manifest, "label")
    anat = region[nb.ids] == region[nb.query_rows][:, None]
    path = anat & (label[nb.ids] == label[nb.query_rows][:, None])
    anat_c, path_c = np.cumsum(anat, axis=1), np.cumsum(path, axis=1)
    out = []
    for n in ns:
        if n > nb.k:
            continue
        a, p = anat_c[:, n - 1], path_c[:, n - 1]
        ok = a > 0
        out.append(
            {"N": n, "queries": int(ok.sum()), "pathology precision | anatomy hit": (p[ok] / a[ok]).mean()}
        )
    return pd.DataFrame(out)


def pathology_classes_per_region(manifest: pd.DataFrame) -> pd.DataFrame:
    """How many pathology classes each modality/region has (the study needs at least two)."""
    cols = label_columns(manifest)
    regions = pd.Series(["/".join(c.split("/")[:2]) for c in cols], name="region")
    return regions.value_counts().rename("classes").reset_index().sort_values("region", ignore_index=True)


# ---- classification ----------------------------------------------------------------------------------
def knn_table(ctx, model: str, paper_k_minus_one: bool = False) -> pd.DataFrame:
    """kNN classification of the test queries, k chosen on val by micro-F1 (cbmir.knn), as one table row."""
    from cbmir.knn import knn_classification

    res = knn_classification(
        ctx.neighbours(model, "val"),
        ctx.neighbours(model, "test"),
        ctx.labels("label"),
        paper_k_minus_one=paper_k_minus_one,
    )
    return _classification_row(model, res.result, {"k (chosen on val)": res.k_val, "k (test)": res.k_test})


def probe_table(ctx, model: str, **probe_settings) -> pd.DataFrame:
    """Linear probe on the frozen embeddings (cbmir.probe), as one table row.

    The paper's settings unless `probe_settings` (e.g. batch_size, max_epochs) say otherwise; they are recorded.
    """
    from cbmir.probe import linear_probe

    vectors = ctx.vectors(model)
    res = linear_probe(
        vectors.matrix,
        ctx.labels("label"),
        *(ctx.searchable_rows(model, s) for s in ("train", "val", "test")),
        embedding_rows=vectors.store_row,
        seed=ctx.cfg.seed,
        **probe_settings,
    )
    return _classification_row(model, res.result, {"best epoch": res.best_epoch, **probe_settings})


def _classification_row(model: str, result, extra: dict) -> pd.DataFrame:
    row = result.to_frame()
    row.insert(0, "model", model)
    for key, value in extra.items():
        row[key] = value
    row["classes skipped (absent from test)"] = ", ".join(result.skipped_classes)
    return row


# ---- summary -----------------------------------------------------------------------------------------
def summary_table(
    neighbours: dict[str, Neighbours],
    manifest: pd.DataFrame,
    ns: Sequence[int] = PAPER_NS,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per model: micro/macro P@N with 95 % CIs, rank, and a paired bootstrap against the best model.

    The best model has the highest micro P@1 (ties broken by macro P@1, then name). All models must have been
    scored on the same queries.
    """
    labels = row_labels(manifest, "label")
    if len({tuple(nb.query_rows) for nb in neighbours.values()}) > 1:
        raise ValueError("summary_table: the models were scored on different queries; re-run their retrieval")
    per_model = {m: per_query_precision(nb, labels) for m, nb in neighbours.items()}
    rows = []
    for model, (pq, q) in per_model.items():
        row = {"model": model}
        for kind in ("micro", "macro"):
            ci = metrics.bootstrap_ci(pq, q, average=kind, n_boot=n_boot, seed=seed).set_index("N")
            for n in ns:
                if n in ci.index:
                    row[f"{kind} P@{n}"] = ci.loc[n, "estimate"]
                    row[f"{kind} P@{n} CI"] = f"[{ci.loc[n, 'low']:.3f}, {ci.loc[n, 'high']:.3f}]"
        rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(1, "rank", table["micro P@1"].rank(ascending=False, method="min").astype(int))
    best = table.sort_values(["micro P@1", "macro P@1", "model"], ascending=[False, False, True])[
        "model"
    ].iloc[0]
    for kind in ("micro", "macro"):
        diff, p = [], []
        for model in table["model"]:
            res = metrics.paired_bootstrap(
                per_model[model][0],
                per_model[best][0],
                per_model[best][1],
                average=kind,
                n_boot=n_boot,
                seed=seed,
            ).iloc[0]
            diff.append(res["difference"])
            p.append(np.nan if model == best else res["p_value"])
        table[f"{kind} P@1 − best"] = diff
        table[f"{kind} P@1 p vs best"] = p
    table.attrs["best"] = best
    return table.sort_values(["rank", "model"], ignore_index=True)


def against_baselines(summary: pd.DataFrame, baselines: Sequence[str]) -> pd.DataFrame:
    """Each non-baseline model's micro and macro P@1 minus the best baseline's."""
    base = summary[summary["model"].isin(baselines)]
    if base.empty:
        return pd.DataFrame({"note": [f"none of the baselines {list(baselines)} ran in this config"]})
    out = []
    for kind in ("micro", "macro"):
        best = base.loc[base[f"{kind} P@1"].idxmax()]
        for _, row in summary[~summary["model"].isin(baselines)].iterrows():
            out.append(
                {
                    "model": row["model"],
                    "measure": f"{kind} P@1",
                    "model value": row[f"{kind} P@1"],
                    "best baseline": best["model"],
                    "baseline value": best[f"{kind} P@1"],
                    "gain": row[f"{kind} P@1"] - best[f"{kind} P@1"],
                }
            )
    return pd.DataFrame(out)


def paper_comparison(
    summary: pd.DataFrame, config_name: str, paper_model: str = "biomedclip"
) -> pd.DataFrame:
    """The paper's published BiomedCLIP micro P@N beside ours where the setup matches, else alone."""
    paper = pd.DataFrame(
        {
            "N": list(PAPER_BIOMEDCLIP_MICRO),
            "paper (BiomedCLIP, micro)": list(PAPER_BIOMEDCLIP_MICRO.values()),
        }
    )
    ours = summary[summary["model"] == paper_model]
    if config_name == "paper" and not ours.empty:
        paper["ours (BiomedCLIP, micro)"] = [ours.iloc[0][f"micro P@{n}"] for n in PAPER_BIOMEDCLIP_MICRO]
        paper["setup"] = "same datasets, splits and model"
    else:
        paper["setup"] = f"not comparable with config {config_name!r} (different data or models)"
    return paper
