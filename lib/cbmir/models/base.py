"""The `Encoder`: what `load_encoder` returns, whatever library the model comes from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image


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
