"""DINOv2 position embeddings resized as the original code does (scale factor with the 0.1 offset).

DINOv2 checkpoints hold a 37 x 37 grid of patch position embeddings (518 px, patch 14); at another input size
they are resized bicubically. The original code (facebookresearch/dinov2 `interpolate_pos_encoding`, with
`interpolate_offset=0.1`) and transformers 4.x pass `nn.functional.interpolate` a *scale factor*
`(grid + 0.1) / 37`; transformers 5 passes the target *size*. Both give a `grid` x `grid` map, but the scale
factor also sets where each output sample is taken from (source = (i + 0.5) / scale - 0.5), so the values
differ. `use_original_interpolation(model)` makes a transformers `Dinov2Model` use the original rule.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

OFFSET = 0.1


def interpolate_original(
    pos_embed: torch.Tensor, rows: int, cols: int, offset: float = OFFSET
) -> torch.Tensor:
    """Resize [1, 1 + M*M, D] position embeddings (class token first) to a `rows` x `cols` patch grid.

    Bicubic on the M x M grid with scale factors ((rows + offset) / M, (cols + offset) / M), no antialiasing,
    in float32, returned in the input's dtype, class token unchanged.
    """
    n = pos_embed.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position embeddings of {n} patches are not a square grid")
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    out = nn.functional.interpolate(
        grid.float(),
        scale_factor=(float((rows + offset) / m), float((cols + offset) / m)),
        mode="bicubic",
        align_corners=False,
    )
    if out.shape[-2:] != (rows, cols):
        raise ValueError(
            f"interpolated grid {tuple(out.shape[-2:])} is not the input's {rows} x {cols} patches"
        )
    out = out.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat((pos_embed[:, :1], out), dim=1)


class Dinov2EmbeddingsOriginal(Dinov2Embeddings):
    """transformers' `Dinov2Embeddings` with the position embeddings resized by `interpolate_original`."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if embeddings.shape[1] == self.position_embeddings.shape[1] and height == width:
            return self.position_embeddings
        ph, pw = self.patch_embeddings.patch_size
        return interpolate_original(self.position_embeddings, height // ph, width // pw)


def use_original_interpolation(model: nn.Module) -> nn.Module:
    """Switch a transformers `Dinov2Model` (or a model holding one as `.dinov2`) to the original interpolation.

    Changes only the class of its `embeddings` (same parameters), so the model still pickles and copies.
    """
    target = getattr(model, "dinov2", model)
    embeddings = getattr(target, "embeddings", None)
    if not isinstance(embeddings, Dinov2Embeddings):
        raise TypeError(
            f"{type(model).__name__} has no DINOv2 embeddings (position interpolation 'original')"
        )
    embeddings.__class__ = Dinov2EmbeddingsOriginal
    return model
