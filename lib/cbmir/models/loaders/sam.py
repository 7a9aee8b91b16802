"""The `medsam` family: MedSAM ViT-B from a segment-anything checkpoint (`medsam_vit_b.pth`), without segment_anything.

The `image_encoder.*` tensors are renamed to transformers' `SamVisionEncoder` and its config is read off the
tensor shapes, so the same code loads MedSAM, SAM or any SA-format ViT image encoder.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..registry import Loaded, LoaderFamily, Preset, WeightsLocation, family, register_family
from ..strict import load_strict, unused_record
from ..transforms import Preprocess
from ..weights import find_local_file, load_state_dict
from .hf import SamMeanPool

_RENAMES = [
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.", r"layers.\1."),
    (r"^neck\.0\.", "neck.conv1."),
    (r"^neck\.1\.", "neck.layer_norm1."),
    (r"^neck\.2\.", "neck.conv2."),
    (r"^neck\.3\.", "neck.layer_norm2."),
]


def sa_to_hf_vision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename segment-anything `image_encoder.*` tensors to transformers `SamVisionEncoder` names."""
    out = {}
    for key, value in state.items():
        if not key.startswith("image_encoder."):
            continue
        new = key.removeprefix("image_encoder.")
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    if not out:
        raise ValueError("no 'image_encoder.*' tensors: not a segment-anything checkpoint")
    return out


def vision_config_from_state(state: dict[str, torch.Tensor]):
    """A `SamVisionConfig` matching the tensor shapes of an SA-format ViT image encoder."""
    from transformers import SamVisionConfig

    proj = state["patch_embed.projection.weight"]
    hidden, patch = proj.shape[0], proj.shape[2]
    grid = state["pos_embed"].shape[1]
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
    rel = [state[f"layers.{i}.attn.rel_pos_h"].shape for i in layers]
    global_idx = [i for i, s in zip(layers, rel, strict=True) if s[0] == 2 * grid - 1]
    windowed = [s for i, s in zip(layers, rel, strict=True) if i not in global_idx]
    window = (windowed[0][0] + 1) // 2 if windowed else 0
    head_dim = rel[0][1]
    return SamVisionConfig(
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=hidden // head_dim,
        patch_size=patch,
        image_size=grid * patch,
        mlp_dim=state["layers.0.mlp.lin1.weight"].shape[0],
        output_channels=state["neck.conv1.weight"].shape[0],
        global_attn_indexes=global_idx,
        window_size=window,
    )


def load_sa_image_encoder(path: Path, name: str = "medsam-vit-b"):
    """A transformers `SamVisionEncoder` with the weights of an SA-format checkpoint file (strictly), and the
    tensors it leaves unused (prompt encoder, mask decoder), counted by head."""
    from transformers.models.sam.modeling_sam import SamVisionEncoder

    raw = load_state_dict(path)
    state = sa_to_hf_vision(raw)
    config = vision_config_from_state(state)
    encoder = SamVisionEncoder(config)
    load_strict(encoder, state, name, path, heads=())
    return encoder, unused_record(k for k in raw if not k.startswith("image_encoder."))


@register_family
class MedsamFamily(LoaderFamily):
    """An SA-format .pth (default `$CBMIR_CACHE/weights/<local_files>`) or an HF SamModel folder; map mean-pooled."""

    name = "medsam"

    def locate(self, preset: Preset) -> WeightsLocation:
        return self.locate_local_file(preset)

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        path = checkpoint or find_local_file(preset.local_files)
        if path is None:
            raise self.missing(
                preset,
                f"the MedSAM checkpoint {preset.source}",
                "Put it in $CBMIR_CACHE/weights/ (default ~/.cache/cbmir/weights/) or pass checkpoint=FILE "
                "(CLI: --checkpoint FILE); an HF SamModel folder also works.",
            )
        if path.is_dir():
            hf_preset = preset.model_copy(update={"options": {"head": "sam_mean"}})
            return family("hf").load(hf_preset, path)
        encoder, unused = load_sa_image_encoder(path, preset.name)
        encoder.eval()
        if preset.preprocess is None:
            raise ValueError(f"preset {preset.name!r}: the medsam loader needs `preprocess`")
        size = encoder.config.image_size
        pre = Preprocess(preset.preprocess.model_copy(update={"resize": size, "pad_to": size}))
        return Loaded(
            SamMeanPool(encoder), pre, pre.describe(), [path], dim=encoder.config.output_channels,
            extra={"unused_weights": unused},
        )  # fmt: skip
