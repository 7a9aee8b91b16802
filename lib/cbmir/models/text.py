"""The text side of image-text models: a `TextTower` (tokenizer + text encoder) and `has_text_tower(spec)`.

An image-text family's `load` returns `Loaded(text=TextTower(...))`; `load_encoder` hands it to the `Encoder`,
whose `encode_text(texts)` maps strings to `[B, D]` vectors in the space of its image embeddings. Tokenizers are
read from the model folder or the local HF cache only (never downloaded). Image-only models have no tower:
`encode_text` raises `NoTextTowerError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cbmir.errors import CbmirError


class NoTextTowerError(CbmirError, ValueError):
    """The model has no text encoder (an image-only model), so it cannot embed text queries."""


@dataclass
class TextTower:
    """A text encoder and its tokenizer.

    `tokenize(texts)` returns the keyword arguments of `module` (e.g. `{"input_ids": ..., "attention_mask": ...}`);
    `module(**batch)` returns `[B, D]` text embeddings (not normalised) in the image embedding space.
    `preprocessing` describes the tokenizer and the pooling, for provenance.
    """

    module: torch.nn.Module
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]]
    preprocessing: dict[str, Any]
    weight_files: list[Path] = field(default_factory=list)
    unused_weights: dict[str, int] = field(default_factory=dict)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """`[len(texts), D]` float32 embeddings on the CPU (not normalised); runs where the module is."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("parameter 'texts' is empty")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(
                f"parameter 'texts': entry {bad[0]} is not a non-empty string: {texts[bad[0]]!r}"
            )
        param = next(self.module.parameters(), None)
        where = param.device if param is not None else torch.device("cpu")
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start : start + batch_size])
            batch = {k: v.to(where) for k, v in batch.items()}
            out.append(self.module.eval()(**batch).float().cpu())
        return torch.cat(out)


def has_text_tower(spec: str) -> bool:
    """Whether a model spec's family builds a text encoder (checked without loading any weights)."""
    from .registry import resolve_spec

    preset = resolve_spec(spec)
    return bool(preset.family.has_text(preset))


def tokenizer_source(folder: Path | None, repo: str | None, names: tuple[str, ...] = ()) -> str | None:
    """A local folder holding tokenizer files: `folder` (or its `tokenizer/` subfolder), else the HF cache
    snapshot of `repo`. None if neither has one. Never downloads."""
    from .weights import hf_cached_file

    files = names or ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")
    for base in [folder, folder / "tokenizer" if folder is not None else None]:
        if base is not None and base.is_dir() and any((base / f).exists() for f in files):
            return str(base)
    if repo:
        hit = hf_cached_file(repo, files)
        if hit is not None:
            return str(Path(hit).parent)
    return None
