"""Hugging Face transformers loaders: ViT, ViT-MAE, DINOv2, ResNet, SAM and generic `hf:REPO`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import Encoder
from .transforms import Preprocess, describe_hf_processor, hf_processor_transform
from .weights import ModelUnavailableError, hash_files, hf_cached_file, portable_path, weight_files_in

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def missing_hf_message(name: str, repo: str) -> str:
    """How to provide an HF checkpoint on a machine without hub access."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface/hub"
    return (
        f"model {name!r} needs the Hugging Face repo {repo!r} (config.json + model.safetensors or pytorch_model.bin), "
        f"which is not in the local HF cache ({hub}) and cannot be downloaded here (HF_HUB_OFFLINE). "
        f"On a machine with internet run `hf download {repo}` and copy the cache here, or "
        f"`AutoModel.from_pretrained('{repo}').save_pretrained(DIR)` and pass checkpoint=DIR (CLI: --checkpoint DIR); "
        f"a folder used as cache_dir (containing models--{repo.replace('/', '--')}) works too."
    )


def from_pretrained(
    cls: Any, name: str, repo: str, checkpoint: Path | None, **kwargs: Any
) -> tuple[Any, dict]:
    """Load `cls` from the HF cache, a save_pretrained folder, an HF cache folder, or a weights file.

    Returns the model and a provenance dict (`weights_from`, `weights_sha256`).
    """
    try:
        if checkpoint is None:
            model = cls.from_pretrained(repo, **kwargs)
            files = [f for f in [hf_cached_file(repo, HF_WEIGHT_FILES)] if f]
            where = f"hf-cache:{repo}"
        elif checkpoint.is_dir() and (checkpoint / "config.json").exists():
            model = cls.from_pretrained(str(checkpoint), **kwargs)
            files, where = weight_files_in(checkpoint), portable_path(checkpoint)
        elif checkpoint.is_dir():
            model = cls.from_pretrained(repo, cache_dir=str(checkpoint), **kwargs)
            files = [f for f in [hf_cached_file(repo, HF_WEIGHT_FILES, cache=checkpoint)] if f]
            where = f"hf-cache:{checkpoint}:{repo}"
        else:
            model, files, where = (
                _from_file(cls, name, repo, checkpoint, **kwargs),
                [checkpoint],
                str(checkpoint),
            )
    except OSError as err:
        if checkpoint is not None and not checkpoint.exists():
            raise FileNotFoundError(f"model {name!r}: checkpoint {checkpoint} does not exist") from err
        raise ModelUnavailableError(
            missing_hf_message(name, repo) + f" [{type(err).__name__}: {err}]"
        ) from err
    return model, {"weights_from": where, "weights_sha256": hash_files(files)}


def _from_file(cls: Any, name: str, repo: str, path: Path, **kwargs: Any) -> Any:
    """Load a bare weights file with a config (beside the file, or the repo's in the HF cache).

    The file is linked into a temporary save_pretrained-style folder so that transformers' own loading
    (including its checkpoint key conversions) applies; .bin/.pth are read weights-only by transformers.
    """
    import tempfile

    from transformers import AutoConfig

    config_src = str(path.parent) if (path.parent / "config.json").exists() else repo
    config = AutoConfig.from_pretrained(config_src)
    target = "model.safetensors" if path.suffix == ".safetensors" else "pytorch_model.bin"
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        (Path(tmp) / target).symlink_to(path.resolve())
        return cls.from_pretrained(tmp, **kwargs)


def processor_or_preset(entry: dict, repo: str, checkpoint: Path | None):
    """The checkpoint's own image processor if it is available locally, else the preset's `preprocess`."""
    from transformers import AutoImageProcessor

    srcs: list[tuple[str, dict]] = []
    if checkpoint is not None and checkpoint.is_dir() and (checkpoint / "preprocessor_config.json").exists():
        srcs.append((str(checkpoint), {}))
    elif checkpoint is not None and checkpoint.is_dir():
        srcs.append((repo, {"cache_dir": str(checkpoint)}))
    elif checkpoint is None:
        srcs.append((repo, {}))
    for src, kw in srcs:
        try:
            proc = AutoImageProcessor.from_pretrained(src, **kw)
        except (OSError, ValueError):
            continue
        return hf_processor_transform(proc), describe_hf_processor(proc)
    if "preprocess" not in entry:
        raise ModelUnavailableError(f"model {entry['name']!r}: no image processor config found for {repo!r}")
    pre = Preprocess(entry["preprocess"])
    return pre, pre.describe()


class ClsToken(nn.Module):
    """`last_hidden_state[:, 0]` of a transformers vision model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).last_hidden_state[:, 0]


class MaeCls(nn.Module):
    """ViT-MAE CLS token. `mask_ratio=0` with an identity noise order is deterministic and unmasked."""

    def __init__(self, model: nn.Module, deterministic: bool):
        super().__init__()
        self.model = model
        self.deterministic = deterministic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = None
        if self.deterministic:
            cfg = self.model.config
            n = (cfg.image_size // cfg.patch_size) ** 2
            noise = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)
        return self.model(pixel_values=x, noise=noise).last_hidden_state[:, 0]


class ResNetHead(nn.Module):
    """HF ResNet: pooled 2048-d features (`pooled`) or the class logits (`logits`, the paper's choice)."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        if output not in {"pooled", "logits"}:
            raise ValueError(f"resnet output must be 'pooled' or 'logits', got {output!r}")
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "logits":
            return self.model(pixel_values=x).logits
        return self.model.resnet(pixel_values=x).pooler_output.flatten(1)


class SamMeanPool(nn.Module):
    """SAM vision encoder: the [B, 256, 64, 64] image embedding averaged over space."""

    def __init__(self, vision_encoder: nn.Module):
        super().__init__()
        self.vision_encoder = vision_encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision_encoder(x).last_hidden_state.mean(dim=(2, 3))


class PooledOrCls(nn.Module):
    """Generic `hf:REPO`: `pooler_output` when the model has one, else the CLS token."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        return out.last_hidden_state[:, 0]


def _encoder(
    entry: dict, module: nn.Module, dim: int, transform, pre: dict, prov: dict, **extra: Any
) -> Encoder:
    module.eval()
    return Encoder(
        spec=entry["spec"],
        module=module,
        transform=transform,
        dim=int(dim),
        embedding_rule=entry["embedding"],
        provenance={"preprocessing": pre, **prov, **extra},
    )


def load_hf_vit(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    from transformers import ViTModel

    repo = entry["source"]
    model, prov = from_pretrained(ViTModel, entry["name"], repo, checkpoint, add_pooling_layer=False)
    transform, pre = processor_or_preset(entry, repo, checkpoint)
    return _encoder(entry, ClsToken(model), model.config.hidden_size, transform, pre, prov)


def load_hf_cls(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    from transformers import AutoModel

    repo = entry["source"]
    model, prov = from_pretrained(AutoModel, entry["name"], repo, checkpoint)
    transform, pre = processor_or_preset(entry, repo, checkpoint)
    return _encoder(entry, ClsToken(model), model.config.hidden_size, transform, pre, prov)


def load_hf_vit_mae(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    from transformers import ViTMAEModel

    repo = entry["source"]
    model, prov = from_pretrained(ViTMAEModel, entry["name"], repo, checkpoint)
    ratio = entry.get("options", {}).get("mask_ratio")
    if ratio is not None:
        model.config.mask_ratio = float(ratio)
    deterministic = model.config.mask_ratio == 0.0
    transform, pre = processor_or_preset(entry, repo, checkpoint)
    return _encoder(
        entry,
        MaeCls(model, deterministic),
        model.config.hidden_size,
        transform,
        pre,
        prov,
        mask_ratio=model.config.mask_ratio,
        deterministic=deterministic,
    )


def load_hf_resnet(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    from transformers import ResNetForImageClassification

    repo = entry["source"]
    model, prov = from_pretrained(ResNetForImageClassification, entry["name"], repo, checkpoint)
    output = entry.get("options", {}).get("output", "pooled")
    dim = model.config.num_labels if output == "logits" else model.config.hidden_sizes[-1]
    transform, pre = processor_or_preset(entry, repo, checkpoint)
    return _encoder(entry, ResNetHead(model, output), dim, transform, pre, prov, output=output)


def load_hf_sam(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    from transformers import SamModel

    repo = entry["source"]
    model, prov = from_pretrained(SamModel, entry["name"], repo, checkpoint)
    transform, pre = _sam_transform(entry, repo, checkpoint)
    dim = model.config.vision_config.output_channels
    return _encoder(entry, SamMeanPool(model.vision_encoder), dim, transform, pre, prov)


def _sam_transform(entry: dict, repo: str, checkpoint: Path | None):
    """SAM's processor returns extra keys and pads to 1024: use the preset settings, sized to the model."""
    pre_cfg = dict(entry["preprocess"])
    cfg_file = checkpoint / "config.json" if checkpoint is not None and checkpoint.is_dir() else None
    if cfg_file is not None and cfg_file.exists():
        size = json.loads(cfg_file.read_text()).get("vision_config", {}).get("image_size")
        if size:
            pre_cfg.update(resize=size, pad_to=size)
    pre = Preprocess(pre_cfg)
    return pre, pre.describe()


def load_hf_generic(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    from transformers import AutoModel

    repo = entry["source"]
    model, prov = from_pretrained(AutoModel, entry["name"], repo, checkpoint)
    transform, pre = processor_or_preset(entry, repo, checkpoint)
    module = PooledOrCls(model).eval()
    with torch.no_grad():
        probe = transform(_grey_probe())[None]
        dim = module(probe).shape[-1]
    return _encoder(entry, module, dim, transform, pre, prov)


def _grey_probe():
    from PIL import Image

    return Image.new("RGB", (64, 64), (128, 128, 128))
