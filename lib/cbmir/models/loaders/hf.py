"""Hugging Face transformers: the `hf` family (ViT, ViT-MAE, DINOv2, ResNet, SAM presets and `hf:REPO`).

A preset picks its head with `options.head`; each head names the transformers class that loads the
checkpoint and how the embedding is taken from it (table `HEADS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..registry import Loaded, LoaderFamily, Preset, PresetError, WeightsLocation, register_family
from ..strict import check_keys, split_unused, unused_record
from ..transforms import Preprocess, describe_hf_processor, hf_processor_transform
from ..weights import (
    CheckpointNotFoundError,
    ModelUnavailableError,
    hf_cached_file,
    portable_path,
    weight_files_in,
)

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
) -> tuple[Any, list[Path], str, dict[str, Any]]:
    """Load `cls` from the HF cache, a save_pretrained folder, an HF cache folder, or a weights file.

    Returns the model, the weight files read, where they came from and transformers' loading info (the
    missing and unexpected keys; `check_hf_loading` turns them into an error or a provenance record).
    """
    kwargs = {**kwargs, "output_loading_info": True}
    try:
        if checkpoint is None:
            model, info = cls.from_pretrained(repo, **kwargs)
            files = [f for f in [hf_cached_file(repo, HF_WEIGHT_FILES)] if f]
            where = f"hf-cache:{repo}"
        elif checkpoint.is_dir() and (checkpoint / "config.json").exists():
            model, info = cls.from_pretrained(str(checkpoint), **kwargs)
            files, where = weight_files_in(checkpoint), portable_path(checkpoint)
        elif checkpoint.is_dir():
            model, info = cls.from_pretrained(repo, cache_dir=str(checkpoint), **kwargs)
            files = [f for f in [hf_cached_file(repo, HF_WEIGHT_FILES, cache=checkpoint)] if f]
            where = f"hf-cache:{checkpoint}:{repo}"
        else:
            (model, info), files, where = (
                _from_file(cls, name, repo, checkpoint, **kwargs),
                [checkpoint],
                str(checkpoint),
            )
    except OSError as err:
        if checkpoint is not None and not checkpoint.exists():
            raise CheckpointNotFoundError(f"model {name!r}: checkpoint {checkpoint} does not exist") from err
        raise ModelUnavailableError(
            missing_hf_message(name, repo) + f" [{type(err).__name__}: {err}]"
        ) from err
    return model, files, where, info


def check_hf_loading(name: str, where: str, info: dict[str, Any], used: str = "") -> dict[str, int]:
    """Refuse a checkpoint that leaves a used weight at its random initialisation or holds unknown tensors.

    `used` is the state-dict prefix of the part the embedding runs (e.g. `vision_encoder.`; "" = all). Missing
    keys outside it, and unexpected keys of unused heads (`cbmir.models.strict.UNUSED_HEADS`), are returned
    counted by head for provenance.
    """
    missing = list(info.get("missing_keys", ()))
    unused_unexpected, unexpected = split_unused(info.get("unexpected_keys", ()))
    used_missing = [k for k in missing if k.startswith(used)]
    mismatched = [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ())]
    check_keys(name, where, used_missing + mismatched, unexpected)
    return {
        **unused_record(unused_unexpected),
        **{
            f"{head} (not in the checkpoint)": n
            for head, n in unused_record(set(missing) - set(used_missing)).items()
        },
    }


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


def processor_or_preset(preset: Preset, checkpoint: Path | None):
    """The checkpoint's own image processor if it is available locally, else the preset's `preprocess`.

    The processor is transformers' PIL backend, which computes what the checkpoints' processors computed when
    they were published (transformers 5 defaults to its torchvision backend, one or two grey levels off). A
    config the installed transformers cannot read falls back to the preset.
    """
    from transformers import AutoImageProcessor

    repo = preset.source
    srcs: list[tuple[str, dict]] = []
    if checkpoint is not None and checkpoint.is_dir() and (checkpoint / "preprocessor_config.json").exists():
        srcs.append((str(checkpoint), {}))
    elif checkpoint is not None and checkpoint.is_dir():
        srcs.append((repo, {"cache_dir": str(checkpoint)}))
    elif checkpoint is None:
        srcs.append((repo, {}))
    for src, kw in srcs:
        try:
            proc = AutoImageProcessor.from_pretrained(src, backend="pil", **kw)
        except (OSError, ValueError):
            continue
        return hf_processor_transform(proc), describe_hf_processor(proc)
    if preset.preprocess is None:
        raise ModelUnavailableError(f"model {preset.name!r}: no image processor config found for {repo!r}")
    pre = Preprocess(preset.preprocess)
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


def sam_transform(preset: Preset, checkpoint: Path | None):
    """SAM's processor returns extra keys and pads to 1024: use the preset settings, sized to the model."""
    if preset.preprocess is None:
        raise ModelUnavailableError(f"model {preset.name!r}: a SAM head needs the preset's `preprocess`")
    cfg = preset.preprocess
    cfg_file = checkpoint / "config.json" if checkpoint is not None and checkpoint.is_dir() else None
    if cfg_file is not None and cfg_file.exists():
        size = json.loads(cfg_file.read_text()).get("vision_config", {}).get("image_size")
        if size:
            cfg = cfg.model_copy(update={"resize": size, "pad_to": size})
    pre = Preprocess(cfg)
    return pre, pre.describe()


def _unused_parts(model: nn.Module, used: str, info: dict[str, Any]) -> dict[str, int]:
    """Tensors the checkpoint filled that the embedding does not run (outside `used`), counted by head."""
    if not used:
        return {}
    missing = set(info.get("missing_keys", ()))
    return unused_record(k for k in model.state_dict() if not k.startswith(used) and k not in missing)


def _mae(model: Any, opts: dict) -> tuple[nn.Module, dict]:
    if opts["mask_ratio"] is not None:
        model.config.mask_ratio = float(opts["mask_ratio"])
    deterministic = model.config.mask_ratio == 0.0
    return MaeCls(model, deterministic), {
        "mask_ratio": model.config.mask_ratio,
        "deterministic": deterministic,
    }


class Head(NamedTuple):
    """A transformers class, its from_pretrained kwargs, the embedding module and the embedding width."""

    model_class: str
    kwargs: dict[str, Any]
    wrap: Callable[[Any, dict], tuple[nn.Module, dict]]
    dim: Callable[[Any], int | None]
    used: str = ""  # state-dict prefix of the part the embedding runs; the rest is listed as unused


HEADS: dict[str, Head] = {
    "vit_cls": Head("ViTModel", {"add_pooling_layer": False}, lambda m, o: (ClsToken(m), {}), lambda m: m.config.hidden_size),
    "cls": Head("AutoModel", {}, lambda m, o: (ClsToken(m), {}), lambda m: m.config.hidden_size),
    "mae_cls": Head("ViTMAEModel", {}, _mae, lambda m: m.config.hidden_size),
    "resnet_pooled": Head(
        "ResNetForImageClassification", {}, lambda m, o: (ResNetHead(m, "pooled"), {"output": "pooled"}),
        lambda m: m.config.hidden_sizes[-1], "resnet.",
    ),
    "resnet_logits": Head(
        "ResNetForImageClassification", {}, lambda m, o: (ResNetHead(m, "logits"), {"output": "logits"}),
        lambda m: m.config.num_labels,
    ),
    "sam_mean": Head(
        "SamModel", {}, lambda m, o: (SamMeanPool(m.vision_encoder), {}), lambda m: m.config.vision_config.output_channels,
        "vision_encoder.",
    ),
    "pooled_or_cls": Head("AutoModel", {}, lambda m, o: (PooledOrCls(m), {}), lambda m: None),
}  # fmt: skip


class HfOptions(BaseModel):
    """`head`: a key of `HEADS`; `mask_ratio` (mae_cls only): 0 = no masking, null = the checkpoint's own;
    `pos_interpolation` (DINOv2 only): `original` resizes the position embeddings as the DINOv2 code and
    transformers 4.x do (`cbmir.models.dinov2_positions`), `transformers` as the installed transformers does."""

    model_config = ConfigDict(extra="forbid")

    head: Literal["vit_cls", "cls", "mae_cls", "resnet_pooled", "resnet_logits", "sam_mean", "pooled_or_cls"]
    mask_ratio: float | None = 0.0
    pos_interpolation: Literal["original", "transformers"] = "transformers"


def _set_pos_interpolation(preset: Preset, model: Any, how: str) -> None:
    """Apply the `pos_interpolation` option (only a DINOv2 model takes `original`)."""
    if how == "transformers":
        return
    from ..dinov2_positions import use_original_interpolation

    try:
        use_original_interpolation(model)
    except TypeError as err:
        raise PresetError(f"preset {preset.name!r}: options.pos_interpolation: {err}") from err


@register_family
class HfFamily(LoaderFamily):
    """Hugging Face transformers checkpoints: from the HF cache, a save_pretrained folder or a weights file."""

    name = "hf"
    prefix = "hf"
    spec_forms = ("hf:REPO",)
    Options = HfOptions

    def generic(self, arg: str, spec: str) -> Preset:
        return Preset(
            name=spec,
            title=f"Hugging Face {arg}",
            loader=self.name,
            source=arg,
            embedding="pooler_output if the model has one, else CLS token",
            dim=None,
            weights=f"Hugging Face {arg}",
            options={"head": "pooled_or_cls"},
        )

    def locate(self, preset: Preset) -> WeightsLocation:
        hit = hf_cached_file(preset.source, HF_WEIGHT_FILES)
        return (
            WeightsLocation(True, str(hit)) if hit else WeightsLocation(False, f"HF cache: {preset.source}")
        )

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        import transformers

        opts = self.options(preset)
        head = HEADS[opts["head"]]
        cls = getattr(transformers, head.model_class)
        model, files, where, info = from_pretrained(
            cls, preset.name, preset.source, checkpoint, **head.kwargs
        )
        unused = check_hf_loading(preset.name, where, info, head.used)
        unused.update(_unused_parts(model, head.used, info))
        _set_pos_interpolation(preset, model, opts["pos_interpolation"])
        module, extra = head.wrap(model, opts)
        extra = {**extra, "unused_weights": unused}
        if opts["pos_interpolation"] != "transformers":
            extra["pos_interpolation"] = opts["pos_interpolation"]
        if opts["head"] == "sam_mean":
            transform, pre = sam_transform(preset, checkpoint)
        else:
            transform, pre = processor_or_preset(preset, checkpoint)
        return Loaded(module, transform, pre, files, where, head.dim(model), extra)
