"""The `Encoder`: what `load_encoder` returns, whatever library the model comes from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .text import NoTextTowerError, TextTower


@dataclass
class Encoder:
    """A loaded image encoder ready for feature extraction.

    `transform` turns one RGB PIL image into a `[C, H, W]` tensor (the checkpoint's own preprocessing);
    `module(batch)` maps a `[B, C, H, W]` batch to `[B, dim]` embeddings by the documented embedding rule.
    `provenance` records what ran (spec, embedding rule, weights SHA-256, preprocessing, behaviour, versions).
    """

    spec: str
    module: torch.nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    dim: int
    embedding_rule: str
    provenance: dict[str, Any] = field(default_factory=dict)
    # image-text models: builds the text encoder on first use (None: an image-only model)
    text_loader: Callable[[], TextTower] | None = field(default=None, repr=False)
    _text: TextTower | None = field(default=None, init=False, repr=False)

    @property
    def has_text(self) -> bool:
        """Whether the model embeds text too (an image-text model)."""
        return self.text_loader is not None

    def text_tower(self) -> TextTower:
        """The text encoder, loaded on first call onto the image module's device; `NoTextTowerError` if none."""
        if self.text_loader is None:
            raise NoTextTowerError(
                f"model {self.spec!r} is an image-only model (no text encoder), so it cannot embed text "
                "queries; use an image-text model (cbmir.models.has_text_tower(spec) says which)"
            )
        if self._text is None:
            tower = self.text_loader()
            param = next(self.module.parameters(), None)
            tower.module.to(param.device if param is not None else "cpu").eval()
            self._text = tower
        return self._text

    def encode_text(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Text queries -> `[B, D]` float32 vectors in the image embedding space (CPU, not normalised).

        Raises `NoTextTowerError` for an image-only model.
        """
        return self.text_tower().encode(texts, batch_size)

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image], device: str | None = None) -> torch.Tensor:
        """Embed a few PIL images directly (convenience for notebooks and tests; no L2 normalisation).

        Runs where the module is; only an explicit `device` moves the (possibly shared) module there.
        """
        module = self.module if device is None else self.module.to(device)
        param = next(module.parameters(), None)
        where = param.device if param is not None else torch.device(device or "cpu")
        batch = torch.stack([self.transform(im.convert("RGB")) for im in images]).to(where)
        return module.eval()(batch).float().cpu()
