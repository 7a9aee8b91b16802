"""The paper's nine encoders at full size with random weights, as the `Encoder` their preset would load.

Each module is the architecture and embedding head that the preset's loader builds (the same wrapper classes),
initialised at random, so speed and memory can be measured without the published weights. Not a benchmark:
`bench_extraction.py` uses it for its GPU section.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from cbmir.models import presets
from cbmir.models.base import Encoder
from cbmir.models.transforms import Preprocess
from torch import nn

PAPER_NINE = (
    "vit-b16-in21k", "vit-mae-b", "dinov2-b14", "sam-vit-b", "medsam-vit-b", "biomedclip", "medclip",
    "resnet50", "clip-vit-l14",
)  # fmt: skip


def _vit() -> nn.Module:
    from cbmir.models.loaders.hf import ClsToken
    from transformers import ViTConfig, ViTModel

    return ClsToken(ViTModel(ViTConfig(), add_pooling_layer=False))


def _mae() -> nn.Module:
    from cbmir.models.loaders.hf import MaeCls
    from transformers import ViTMAEConfig, ViTMAEModel

    return MaeCls(ViTMAEModel(ViTMAEConfig(mask_ratio=0.0)), deterministic=True)


def _dinov2() -> nn.Module:
    from cbmir.models.dinov2_positions import use_original_interpolation
    from cbmir.models.loaders.hf import ClsToken
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(image_size=518, patch_size=14, layerscale_value=1.0))
    return ClsToken(use_original_interpolation(model))


def _sam() -> nn.Module:
    from cbmir.models.loaders.hf import SamMeanPool
    from transformers import SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionEncoder

    return SamMeanPool(SamVisionEncoder(SamVisionConfig()))


def _open_clip(embed_dim: int, vision_cfg: dict, quick_gelu: bool) -> nn.Module:
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    return _build_vision_tower(embed_dim, CLIPVisionCfg(**vision_cfg), quick_gelu=quick_gelu)


def _medclip() -> nn.Module:
    from cbmir.models.loaders.medclip import MedCLIPVision
    from transformers import SwinConfig, SwinModel

    return MedCLIPVision(SwinModel(SwinConfig(), add_pooling_layer=True), nn.Linear(768, 512, bias=False))


def _resnet50() -> nn.Module:
    from cbmir.models.loaders.hf import ResNetHead
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetHead(ResNetForImageClassification(ResNetConfig(num_labels=1000)), "pooled")


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "vit-b16-in21k": _vit,
    "vit-mae-b": _mae,
    "dinov2-b14": _dinov2,
    "sam-vit-b": _sam,
    "medsam-vit-b": _sam,  # MedSAM is SAM ViT-B fine-tuned: the same image encoder
    "biomedclip": lambda: _open_clip(
        512,
        {
            "timm_model_name": "vit_base_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        quick_gelu=False,
    ),  # fmt: skip
    "medclip": _medclip,
    "resnet50": _resnet50,
    "clip-vit-l14": lambda: _open_clip(
        768, {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14}, quick_gelu=True
    ),
}


def random_encoder(name: str, seed: int = 0, device: str | None = None) -> Encoder:
    """The preset `name`'s architecture and embedding head with seeded random weights, as an `Encoder`.

    `device="meta"` builds it without memory or initialisation (for shapes and parameter counts).
    """
    if name not in BUILDERS:
        raise ValueError(f"no random-weight builder for {name!r}; known: {', '.join(BUILDERS)}")
    preset = presets()[name]
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        module = BUILDERS[name]().eval()
    transform = Preprocess(preset.preprocess) if preset.preprocess is not None else None
    return Encoder(
        spec=f"{name} (random weights)",
        module=module,
        transform=transform,
        dim=int(preset.dim),
        embedding_rule=preset.embedding,
        provenance={"weights": "random", "seed": seed},
    )


def input_side(name: str) -> int:
    """Side of the square input tensor the preset feeds its encoder."""
    return int(presets()[name].input_size)
