"""The `medclip` family: MedCLIP-ViT's vision tower in transformers, Swin-T (pooled) + linear 768->512, no bias.

Loads the `vision_model.*` tensors of MedCLIP's `pytorch_model.bin` (weights_only) without the medclip package,
which would download weights and pull in its text tower. The Swin config is read off the tensor shapes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ..registry import Loaded, LoaderFamily, Preset, WeightsLocation, register_family
from ..strict import check_keys, unused_record
from ..transforms import Preprocess
from ..weights import CheckpointNotFoundError, find_local_file, load_state_dict


class MedCLIPVision(nn.Module):
    """`encode_image` of MedCLIP-ViT without the final L2 normalisation."""

    def __init__(self, swin: nn.Module, projection: nn.Linear):
        super().__init__()
        self.model, self.projection_head = swin, projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.model(pixel_values=x).pooler_output)


def swin_config_from_state(state: dict[str, torch.Tensor], image_size: int = 224):
    """A `SwinConfig` matching a Swin state dict (keys without the `model.` prefix)."""
    from transformers import SwinConfig

    patch = state["embeddings.patch_embeddings.projection.weight"]
    depths, heads, window = [], [], 7
    stage = 0
    while any(k.startswith(f"encoder.layers.{stage}.") for k in state):
        blocks = {int(k.split(".")[4]) for k in state if k.startswith(f"encoder.layers.{stage}.blocks.")}
        first = f"encoder.layers.{stage}.blocks.0."
        table = next(
            v for k, v in state.items() if k.startswith(first) and k.endswith("relative_position_bias_table")
        )
        depths.append(len(blocks))
        heads.append(table.shape[1])
        window = int(round((table.shape[0] ** 0.5 + 1) / 2))
        stage += 1
    return SwinConfig(
        image_size=image_size,
        patch_size=patch.shape[2],
        embed_dim=patch.shape[0],
        depths=depths,
        num_heads=heads,
        window_size=window,
    )


def build_medclip_vision(path: Path, image_size: int = 224) -> tuple[MedCLIPVision, dict[str, int]]:
    """MedCLIP-ViT vision tower from a MedCLIP `pytorch_model.bin` (or a vision-only state dict), loaded
    strictly, and the tensors it leaves unused (the text tower, the logit scale), counted by head."""
    from safetensors.torch import save_file
    from transformers import SwinModel

    state = load_state_dict(path)
    vision = (
        "vision_model.model.",
        "vision_model.projection_head.weight",
        "model.",
        "projection_head.weight",
    )
    unused = unused_record(k for k in state if not k.startswith(vision))
    state = {k.removeprefix("vision_model."): v for k, v in state.items() if not k.startswith("text_model.")}
    swin_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if "projection_head.weight" not in state or not swin_state:
        raise ValueError(
            f"{path}: no MedCLIP vision tensors (vision_model.model.* and vision_model.projection_head.weight)"
        )
    config = swin_config_from_state(swin_state, image_size)
    swin_state = {k: v for k, v in swin_state.items() if "relative_position_index" not in k}
    with tempfile.TemporaryDirectory() as tmp:  # transformers' own loader converts legacy (4.x) key names
        config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in swin_state.items()}, str(Path(tmp) / "model.safetensors"))
        swin, info = SwinModel.from_pretrained(tmp, add_pooling_layer=True, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if "relative_position_index" not in k]
    check_keys("medclip", path, missing, info["unexpected_keys"])
    weight = state["projection_head.weight"]
    projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    projection.weight.data.copy_(weight)
    return MedCLIPVision(swin, projection).eval(), unused


@register_family
class MedclipFamily(LoaderFamily):
    """A MedCLIP-ViT folder (with pytorch_model.bin) or the file itself; default `$CBMIR_CACHE/weights/<local_files>`."""

    name = "medclip"

    def locate(self, preset: Preset) -> WeightsLocation:
        return self.locate_local_file(preset)

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        path = checkpoint or find_local_file(preset.local_files)
        if path is None:
            raise self.missing(
                preset,
                "MedCLIP-ViT's pytorch_model.bin",
                "Put the unzipped folder at $CBMIR_CACHE/weights/medclip-vit/ (default ~/.cache/cbmir/weights/) "
                "or pass checkpoint=FOLDER_OR_FILE.",
            )
        if path.is_dir():
            path = path / "pytorch_model.bin"
        if not path.exists():
            raise CheckpointNotFoundError(f"model {preset.name!r}: checkpoint {path} does not exist")
        if preset.preprocess is None:
            raise ValueError(f"preset {preset.name!r}: the medclip loader needs `preprocess`")
        pre = Preprocess(preset.preprocess)
        module, unused = build_medclip_vision(path, image_size=preset.preprocess.crop or 224)
        return Loaded(
            module, pre, pre.describe(), [path], dim=module.projection_head.out_features,
            extra={"unused_weights": unused},
        )  # fmt: skip
