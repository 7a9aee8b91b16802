"""Text-to-image retrieval: class prompts from label paths, text vectors, and their search over an image index.

A label path `XR/chest/Pneumonia` gives the template fields `{modality}` (`X-ray`; `MODALITY_WORDS` spells the
codes out), `{region}` (`chest`), `{finding}` (`pneumonia`: the rest of the path, `_` and `/` as spaces, lower
case unless it is an acronym) and `{label}` (the whole path). With the default template
`"a {modality} image of the {region} showing {finding}"` that is "a X-ray image of the chest showing pneumonia".
Several templates are averaged (prompt ensembling: the mean of the unit text vectors, normalised again).
Text queries are ranked against the image index with `cbmir.search.search` (exact cosine search), as image
queries are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cbmir.errors import CbmirError

if TYPE_CHECKING:
    from cbmir.models import Encoder

DEFAULT_TEMPLATE = "a {modality} image of the {region} showing {finding}"
MODALITY_WORDS = {"XR": "X-ray", "CR": "X-ray", "DX": "X-ray", "CT": "CT", "MR": "MRI", "US": "ultrasound",
                  "PET": "PET", "NM": "nuclear medicine", "MG": "mammography"}  # fmt: skip
FIELDS = ("modality", "region", "finding", "label")


class TemplateError(CbmirError, ValueError):
    """A prompt template uses an unknown field or is malformed (the message names the template)."""


def label_fields(label: str, modality_words: dict[str, str] | None = None) -> dict[str, str]:
    """The template fields of one label path (`XR/chest/Pneumonia`)."""
    words = MODALITY_WORDS if modality_words is None else modality_words
    parts = [p for p in str(label).split("/") if p]
    if not parts:
        raise ValueError(f"parameter 'label': empty label path {label!r}")
    modality = words.get(parts[0], parts[0])
    region = parts[1].replace("_", " ") if len(parts) > 1 else ""
    rest = " ".join(p.replace("_", " ") for p in parts[2:]) or region
    finding = " ".join(w if (w.isupper() and len(w) > 1) else w.lower() for w in rest.split())
    return {"modality": modality, "region": region.lower(), "finding": finding, "label": str(label)}


def check_templates(templates: str | Sequence[str]) -> list[str]:
    """Templates as a non-empty list; `TemplateError` naming a template with an unknown field."""
    import string

    items = [templates] if isinstance(templates, str) else list(templates)
    if not items:
        raise TemplateError("parameter 'templates' is empty: give at least one prompt template")
    for t in items:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
        except ValueError as err:
            raise TemplateError(f"prompt template {t!r} is malformed: {err}") from err
        unknown = names - set(FIELDS)
        if unknown:
            raise TemplateError(
                f"prompt template {t!r}: unknown field(s) {sorted(unknown)}; use {list(FIELDS)}"
            )
    return items


def class_prompts(
    classes: Sequence[str],
    templates: str | Sequence[str] = DEFAULT_TEMPLATE,
    modality_words: dict | None = None,
) -> dict[str, list[str]]:
    """Each class's prompts: one per template, filled from its label path."""
    items = check_templates(templates)
    return {c: [t.format(**label_fields(c, modality_words)) for t in items] for c in classes}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_texts(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """`[n, D]` float32 unit text vectors (`NoTextTowerError` for an image-only model)."""
    return unit_rows(encoder.encode_text(list(texts)).numpy())


def embed_prompts(encoder: Encoder, prompts: dict[str, list[str]]) -> np.ndarray:
    """`[C, D]` unit class vectors in the order of `prompts`: the mean of each class's unit prompt vectors."""
    flat = [p for ps in prompts.values() for p in ps]
    vectors = embed_texts(encoder, flat)
    out, start = [], 0
    for ps in prompts.values():
        out.append(vectors[start : start + len(ps)].mean(axis=0))
        start += len(ps)
    return unit_rows(np.stack(out))


def search_text(image_vectors: np.ndarray, text_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [T, k], positions [T, k] in `image_vectors`) of each text vector's k nearest images (exact)."""
    from cbmir.search import search

    return search(image_vectors, text_vectors, min(k, len(image_vectors)), progress=False)


def zero_shot_scores(image_vectors: np.ndarray, class_vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity `[N, C]` of each image to each class's text vector (arg-max = the predicted class)."""
    return unit_rows(image_vectors) @ unit_rows(class_vectors).T
