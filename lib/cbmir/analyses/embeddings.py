"""The embeddings study: what a store holds, and how similar same- and different-label images of different cases are.

Pairs of images of one case (adjacent slices of a volume, frames of a clip) are left out everywhere: they say
nothing about retrieval, which never returns the query's own case when index and queries can share one.

**Separation** of an image i = mean cosine similarity to the same-label images of other cases minus the mean
to the different-label images of other cases (images without a same-label image in another case are left
out). Averaged over the images of a seeded sample of at most `max_points` (partners drawn from the same
sample), with a cluster-bootstrap CI over the images' cases.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from cbmir.analyses.classify import cluster_bootstrap
from cbmir.analyses.embedding_space import sample_rows
from cbmir.errors import CbmirError
from cbmir.search import row_norms


class EmbeddingsError(CbmirError, ValueError):
    """Inputs of the embeddings study that disagree."""


def _dtype_ran(prov: Mapping) -> str:
    """The dtype the forward pass ran in: `dtype` where the store records it, else from the older `bf16` flag;
    "imported" for a store of published vectors (no forward pass ran here)."""
    if prov.get("source"):
        return "imported"
    return prov.get("dtype") or ("bf16" if prov.get("bf16") else "fp32")


def _compiled(prov: Mapping) -> bool:
    """Whether the forward pass ran under torch.compile."""
    return str((prov.get("speed") or {}).get("compile", "")).startswith("compiled")


def store_summary(store) -> pd.DataFrame:
    """One row: images, dimension, failed images, the range of row norms, and the extraction speed."""
    emb = np.asarray(store.embeddings)
    norms = row_norms(emb)
    prov = store.provenance
    seconds = prov.get("seconds")
    return pd.DataFrame(
        [
            {
                "model": prov.get("spec"),
                "images": len(emb),
                "dimension": emb.shape[1],
                "failed": len(store.failed),
                "min norm": norms.min() if len(emb) else np.nan,
                "max norm": norms.max() if len(emb) else np.nan,
                "seconds": seconds,
                "images/s": len(emb) / seconds if seconds else np.nan,
                "device": prov.get("device"),
                "precision": _dtype_ran(prov),
                "torch.compile": None if prov.get("source") else _compiled(prov),  # imported: nothing ran
            }
        ]
    )


def precision_sentence(provenance: Mapping[str, Mapping]) -> str:
    """How each model's embeddings were computed (a statement of method from the stores' provenance).

    `provenance` maps model -> its store's provenance. Names the dtype that ran per model (or that the store was
    imported), the processor each CPU run ran on, the models that ran under torch.compile and its keep rule,
    that `precision: auto` follows the machine, and where bf16's effect is measured.
    """
    groups: dict[str, list[str]] = {}
    compiled, cpus = [], []
    for model, prov in provenance.items():
        if prov.get("source"):  # e.g. imported from the authors' published embeddings
            groups.setdefault(str(prov["source"]), []).append(model)
            continue
        if (prov.get("encoder") or {}).get("loader") == "raw_pixels":  # no network: the pixels are the vector
            groups.setdefault("the resized pixels themselves (no network)", []).append(model)
            continue
        groups.setdefault(f"computed in {_dtype_ran(prov)}", []).append(model)
        if _compiled(prov):
            compiled.append(model)
        speed = prov.get("speed") or {}
        if speed.get("cpu") and prov.get("device", "cpu") == "cpu":
            isa = ", ".join(speed.get("isa") or []) or "no vector extensions recorded"
            cpus.append(f"{speed['cpu']} ({isa})")
    parts = [f"{how} for {', '.join(models)}" for how, models in groups.items()]
    text = "Embeddings: " + "; ".join(parts) + "; every store holds float32 rows of unit length."
    if cpus:
        text += f" Extraction ran on the CPU: {' and '.join(dict.fromkeys(cpus))}."
    if any(how.startswith("computed in") for how in groups):
        text += (
            " `precision: auto` (the default) runs bf16 where the processor multiplies bf16 natively (AVX-512 BF16"
            " or AMX, or a GPU with bf16) and fp32 elsewhere, so the same config can give slightly different"
            " vectors on another machine."
        )
    if compiled:
        from cbmir.accelerate import BF16_MIN_COSINE, FP32_MIN_COSINE

        text += (
            f" torch.compile ran for {', '.join(compiled)}; a compiled module is kept only if, on a test input, its"
            f" output matches the original module's (cosine at least {FP32_MIN_COSINE} in fp32, {BF16_MIN_COSINE}"
            " in bf16); whether to compile is decided by the run's counted FLOPs against a threshold for the"
            " precision and processor kind, not by a timing on this machine"
            " (notebook 2's provenance gives the timing)."
        )
    if any(how == "computed in bf16" for how in groups):
        text += (
            " What bf16 changes against fp32 on these rows is measured outside this report "
            "(`benchmarks/bench_precision.py`, recorded in `benchmarks/RESULTS.md`)."
        )
    return text


def provenance_table(store) -> pd.DataFrame:
    """The store's provenance as `field, value` (nested values flattened to `key.subkey`).

    Where the store records the dtype that ran, the older `bf16` request flag is left out (with `precision:
    auto` it stays False while bf16 runs) and `precision` (the mode: fp32, autocast, weights+autocast) is shown
    as `precision mode`. Real numbers are shown to 4 significant digits.
    """
    prov = dict(store.provenance)
    if "dtype" in prov:
        prov.pop("bf16", None)
        if "precision" in prov:
            prov["precision mode"] = prov.pop("precision")
    flat = pd.json_normalize(prov, sep=".").T.reset_index()
    flat.columns = ["field", "value"]
    # for reading: a real number to 4 significant digits (the store's provenance.json keeps every digit)
    flat["value"] = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat["value"]]
    return flat


def _sample(emb, labels, cases, max_points, seed):
    labels, cases = np.asarray(labels).astype(str), np.asarray(cases)
    if not len(emb) == len(labels) == len(cases):
        raise EmbeddingsError(
            f"parameters disagree: {len(emb)} embeddings, {len(labels)} labels, {len(cases)} cases"
        )
    rows = sample_rows(len(emb), max_points, seed)
    x = np.asarray(emb, dtype=np.float64)[rows]
    return x, labels[rows], cases[rows]


def cosine_separation(
    emb: np.ndarray,
    labels: np.ndarray,
    cases: np.ndarray,
    max_points: int | None = 5000,
    seed: int = 0,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Per-image mean cosine to same- and different-label images of other cases, and their difference.

    Columns: `pair` ("same label", "different label", "difference"), `mean, ci_low, ci_high, label-blind, images,
    cases`. `label-blind` (the reference value) is what an embedding blind to the label would give: for either label row, the mean over the
    same images of their mean cosine to every image of another case; for the difference, 0.
    """
    x, lab, cas = _sample(emb, labels, cases, max_points, seed)
    sim = x @ x.T
    other = cas[:, None] != cas[None, :]
    same = (lab[:, None] == lab[None, :]) & other
    diff = (lab[:, None] != lab[None, :]) & other
    keep = same.any(1) & diff.any(1)
    if not keep.any():
        raise EmbeddingsError(
            "cosine_separation: no image has both a same- and a different-label image in another case"
        )
    s = (sim * same).sum(1)[keep] / same.sum(1)[keep]
    d = (sim * diff).sum(1)[keep] / diff.sum(1)[keep]
    blind = float(np.mean((sim * other).sum(1)[keep] / other.sum(1)[keep]))
    values = {"same label": s, "different label": d, "difference": s - d}
    ci = cluster_bootstrap(
        cas[keep], lambda w: {k: np.average(v, weights=w) for k, v in values.items()}, n_boot, seed
    )
    return pd.DataFrame(
        {
            "pair": list(values),
            "mean": ci["value"].to_numpy(),
            "ci_low": ci["ci_low"].to_numpy(),
            "ci_high": ci["ci_high"].to_numpy(),
            "label-blind": [blind, blind, 0.0],
            "images": int(keep.sum()),
            "cases": len(np.unique(cas[keep])),
        }
    )


def similarity_pairs(
    emb: np.ndarray,
    labels: np.ndarray,
    cases: np.ndarray,
    max_points: int | None = 5000,
    max_pairs: int = 20000,
    seed: int = 0,
) -> pd.DataFrame:
    """Cosine similarity of a seeded sample of pairs of images from DIFFERENT cases: `similarity, pair`
    ("same label" / "different label"), at most `max_pairs` of each kind (for a histogram)."""
    x, lab, cas = _sample(emb, labels, cases, max_points, seed)
    i, j = np.triu_indices(len(x), k=1)
    keep = cas[i] != cas[j]
    i, j = i[keep], j[keep]
    same = lab[i] == lab[j]
    rng = np.random.default_rng(seed)
    parts = []
    for flag, name in ((True, "same label"), (False, "different label")):
        pos = np.flatnonzero(same == flag)
        if len(pos) > max_pairs:
            pos = np.sort(rng.choice(pos, size=max_pairs, replace=False))
        sims = np.einsum("ij,ij->i", x[i[pos]], x[j[pos]])
        parts.append(pd.DataFrame({"similarity": sims, "pair": name}))
    return pd.concat(parts, ignore_index=True)
