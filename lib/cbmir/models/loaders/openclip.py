"""open_clip: the `open_clip` family (`open_clip:ARCH@PRETRAINED`, `open_clip:hf-hub:REPO`).

Image embedding: only `visual.*` tensors are loaded into open_clip's own vision tower (`encode_image(x)` of the
full model equals `visual(x)`), so extraction needs no tokenizer nor Hugging Face text config. Text queries
(`Encoder.encode_text`) build the text tower on first use: open_clip's `TextTransformer` (CLIP) or its
`HFTextEncoder` (BiomedCLIP, UniMed-CLIP: a BERT whose config comes from a local folder, the HF cache, or the
tensor shapes), loaded strictly, with the tokenizer open_clip would use read from local files only.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..registry import Loaded, LoaderFamily, Preset, PresetError, WeightsLocation, register_family
from ..strict import load_strict, unused_record
from ..text import TextTower
from ..transforms import GreyFirst
from ..weights import (
    CheckpointNotFoundError,
    ModelUnavailableError,
    first_weight_file,
    hf_cached_file,
    load_state_dict,
    portable_path,
    weight_files_in,
)

OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


HOW = (
    "On a machine with internet download the repo (`hf download REPO`) and copy the HF cache here, or pass "
    "checkpoint=FOLDER holding open_clip_config.json + open_clip_model.safetensors (or a weights file for a "
    "built-in architecture)."
)


def _resolve(preset: Preset, checkpoint: Path | None):
    """(model_cfg, preprocess_cfg, quick_gelu, weights_path) for an open_clip source and optional checkpoint."""
    import open_clip

    name, source = preset.name, preset.source
    fam = preset.family
    local_cfg = (
        checkpoint / "open_clip_config.json" if checkpoint is not None and checkpoint.is_dir() else None
    )
    if local_cfg is not None and local_cfg.exists():
        cfg = json.loads(local_cfg.read_text())
        files = [p for p in weight_files_in(checkpoint) if p.name.startswith("open_clip")] or weight_files_in(
            checkpoint
        )
        if not files:
            raise CheckpointNotFoundError(f"model {name!r}: no weights file in {checkpoint}")
        mc = cfg["model_cfg"]
        return mc, cfg.get("preprocess_cfg", {}), bool(mc.get("quick_gelu", False)), files[0]
    if source.startswith("hf-hub:"):
        repo = source.removeprefix("hf-hub:")
        cache = checkpoint if checkpoint is not None and checkpoint.is_dir() else None
        cfg_path = hf_cached_file(repo, ["open_clip_config.json"], cache=cache)
        if cfg_path is None:
            raise fam.missing(preset, f"open_clip_config.json of Hugging Face repo {repo!r}", HOW)
        weights = checkpoint if checkpoint is not None and checkpoint.is_file() else None
        weights = weights or hf_cached_file(repo, OPEN_CLIP_WEIGHTS, cache=cache)
        if weights is None:
            raise fam.missing(
                preset, f"the weights of Hugging Face repo {repo!r} ({' or '.join(OPEN_CLIP_WEIGHTS)})", HOW
            )
        cfg = json.loads(Path(cfg_path).read_text())
        mc = cfg["model_cfg"]
        return mc, cfg.get("preprocess_cfg", {}), bool(mc.get("quick_gelu", False)), Path(weights)
    arch, _, tag = source.partition("@")
    mc = open_clip.get_model_config(arch)
    if mc is None:
        raise PresetError(f"model {name!r}: unknown open_clip architecture {arch!r}")
    pcfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if checkpoint is not None:
        weights = first_weight_file(checkpoint, name)
    else:
        repo = (pcfg or {}).get("hf_hub", "").strip("/")
        weights = hf_cached_file(repo, OPEN_CLIP_WEIGHTS) if repo else None
        if weights is None:
            raise fam.missing(
                preset, f"open_clip weights {source!r} (Hugging Face repo {repo or '?'!r})", HOW
            )
    quick = bool(mc.get("quick_gelu", False) or (pcfg or {}).get("quick_gelu", False))
    return mc, dict(pcfg or {}), quick, Path(weights)


def hub_repo(source: str) -> str:
    """The Hugging Face repo holding an open_clip source's weights ('' if open_clip names none)."""
    if source.startswith("hf-hub:"):
        return source.removeprefix("hf-hub:")
    import open_clip

    arch, _, tag = source.partition("@")
    return (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").strip("/")


@register_family
class OpenClipFamily(LoaderFamily):
    """open_clip checkpoints: the vision tower with `encode_image`'s projection, open_clip's eval transform."""

    name = "open_clip"
    prefix = "open_clip"
    spec_forms = ("open_clip:ARCH@PRETRAINED", "open_clip:hf-hub:REPO")

    def generic(self, arg: str, spec: str) -> Preset:
        if "@" not in arg and not arg.startswith("hf-hub:"):
            raise PresetError(f"model spec {spec!r}: use open_clip:ARCH@PRETRAINED or open_clip:hf-hub:REPO")
        return Preset(
            name=spec,
            title=f"open_clip {arg}",
            loader=self.name,
            source=arg,
            embedding="encode_image (vision tower + projection)",
            dim=None,
            weights=f"open_clip {arg} (its Hugging Face repo in the HF cache)",
        )

    def has_text(self, preset: Preset) -> bool:
        return True

    def locate(self, preset: Preset) -> WeightsLocation:
        repo = hub_repo(preset.source)
        hit = hf_cached_file(repo, OPEN_CLIP_WEIGHTS) if repo else None
        return WeightsLocation(True, str(hit)) if hit else WeightsLocation(False, f"HF cache: {repo}")

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        mc, pp, quick_gelu, weights = _resolve(preset, checkpoint)
        loaded = vision_tower_from(preset, mc, pp, quick_gelu, load_state_dict(weights), weights)
        loaded.text = functools.partial(build_text_tower, preset, checkpoint)  # picklable
        return loaded


# ---- the text tower (text-to-image retrieval) ------------------------------------------------------------
def _text_state(state: dict, custom: bool) -> dict:
    """The text-tower tensors of a full open_clip state dict, named as in the tower module."""
    if custom:  # CustomTextCLIP: the tower lives under `text.`
        return {k.removeprefix("text."): v for k, v in state.items() if k.startswith("text.")}
    skip = ("visual.", "logit_scale", "logit_bias")
    return {k: v for k, v in state.items() if not k.startswith(skip)}


def bert_config_from_state(state: dict, prefix: str = "transformer."):
    """A `BertConfig` read off a BERT state dict's tensor shapes; heads = hidden / 64 (every BERT/PubMedBERT size)."""
    from transformers import BertConfig

    word = state[f"{prefix}embeddings.word_embeddings.weight"]
    layers = {int(k[len(prefix) :].split(".")[2]) for k in state if k.startswith(f"{prefix}encoder.layer.")}
    hidden = int(word.shape[1])
    return BertConfig(
        vocab_size=int(word.shape[0]),
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=int(state[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state[f"{prefix}embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state[f"{prefix}embeddings.token_type_embeddings.weight"].shape[0]),
    )


def _hf_text_config(name: str, tstate: dict) -> tuple[Any, str]:
    """The HF config of an open_clip `hf_model_name`: a local folder, the HF cache, else read off the shapes."""
    from transformers import AutoConfig

    folder = Path(name).expanduser()
    cached = hf_cached_file(name, ["config.json"]) if "/" in name and not folder.exists() else None
    if folder.is_dir() and (folder / "config.json").exists():
        return AutoConfig.from_pretrained(str(folder)), portable_path(folder / "config.json")
    if cached is not None:
        return AutoConfig.from_pretrained(str(Path(cached).parent)), f"hf-cache:{name}"
    if "transformer.embeddings.word_embeddings.weight" in tstate:
        return bert_config_from_state(tstate), "BERT config read off the tensor shapes (64-dim heads)"
    raise ModelUnavailableError(
        f"the text tower needs the config of {name!r} (not in the HF cache, and not a BERT state dict)"
    )


def _tokenizer_dir(preset: Preset, checkpoint: Path | None, text_cfg: dict) -> str:
    """A local folder with the HF tokenizer of an open_clip model with an HF text tower. Never downloads."""
    from ..text import tokenizer_source

    folder = checkpoint if checkpoint is not None and checkpoint.is_dir() else None
    repo = preset.source.removeprefix("hf-hub:") if preset.source.startswith("hf-hub:") else None
    name = text_cfg.get("hf_tokenizer_name", "")
    found = tokenizer_source(folder, repo)
    if found is None and name:
        found = tokenizer_source(Path(name).expanduser(), name if "/" in name else None)
    if found is None:
        raise preset.family.missing(
            preset,
            f"the tokenizer files of {name or repo!r} (tokenizer.json / vocab.txt)",
            "Put them in the checkpoint folder (or its tokenizer/ subfolder), or copy the HF cache of the repo here.",
        )
    return found


def build_text_tower(preset: Preset, checkpoint: Path | None) -> TextTower:
    """open_clip's text tower (`encode_text`), loaded strictly from the checkpoint, and its tokenizer."""
    mc, _, quick_gelu, weights = _resolve(preset, checkpoint)
    return text_tower_from(
        preset, mc, quick_gelu, load_state_dict(weights), weights,
        lambda text_cfg: _tokenizer_dir(preset, checkpoint, text_cfg),
    )  # fmt: skip


def text_tower_from(
    preset: Preset,
    mc: dict,
    quick_gelu: bool,
    state: dict,
    weights: Path,
    tokenizer_dir: Callable[[dict], str],
) -> TextTower:
    """The text tower of open_clip model config `mc` from a full state dict (CLIP: top-level text keys;
    CustomTextCLIP: `text.*`), loaded strictly; `tokenizer_dir(text_cfg)` finds an HF tokenizer folder."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip.model import CLIPTextCfg, _build_text_tower
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text_cfg = dict(mc.get("text_cfg", {}))
    custom = any(k.startswith("text.") for k in state)
    tstate = _text_state(state, custom)
    dropped = [k for k in tstate if k.endswith("embeddings.position_ids")]  # a buffer (arange), not a weight
    tstate = {k: v for k, v in tstate.items() if k not in dropped}
    context = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_model_name"):
        config, config_from = _hf_text_config(text_cfg["hf_model_name"], tstate)
        pooler = text_cfg.get("hf_pooler_type")
        tower = HFTextEncoder(
            text_cfg["hf_model_name"], output_dim=int(mc["embed_dim"]), config=config,
            pooler_type=pooler, proj_type=text_cfg.get("hf_proj_type"), pretrained=False,
        )  # fmt: skip
        if pooler != "cls_pooler" and getattr(tower.transformer, "pooler", None) is not None:
            tower.transformer.pooler = None  # open_clip builds it without a pooler (add_pooling_layer=False)
        described = {"hf_text_config": config_from}
    else:
        tower = _build_text_tower(int(mc["embed_dim"]), CLIPTextCfg(**text_cfg), quick_gelu=quick_gelu)
        described = {}
    if text_cfg.get("hf_tokenizer_name"):  # as open_clip.get_tokenizer decides, from local files
        tokenizer = HFTokenizer(
            tokenizer_dir(text_cfg), context_length=context,
            tokenizer_mode=text_cfg.get("tokenizer_mode"), **text_cfg.get("tokenizer_kwargs", {}),
        )  # fmt: skip
        described["tokenizer"] = "open_clip HFTokenizer"
    else:
        tokenizer = SimpleTokenizer(context_length=context, **text_cfg.get("tokenizer_kwargs", {}))
        described["tokenizer"] = "open_clip SimpleTokenizer (CLIP BPE, bundled with open_clip)"
    unused = load_strict(tower, tstate, preset.name, weights, heads=("visual", "logit_scale", "logit_bias"))
    return TextTower(
        _OpenClipText(tower),
        lambda texts: {"text": tokenizer(list(texts))},
        {"kind": "open_clip encode_text", "context_length": context, **described},
        [weights],
        {**unused, **({"position_ids (buffer)": len(dropped)} if dropped else {})},
    )


def openclip_transform(model_cfg: dict, preprocess_cfg: dict):
    """open_clip's eval transform for a model config and its checkpoint's preprocess config (defaults: the
    OpenAI mean and std, bicubic, shortest-side resize), and its settings for provenance."""
    import open_clip

    pp = preprocess_cfg
    size = model_cfg["vision_cfg"].get("image_size", 224)
    pre = {
        "image_size": size,
        "mean": pp.get("mean") or open_clip.OPENAI_DATASET_MEAN,
        "std": pp.get("std") or open_clip.OPENAI_DATASET_STD,
        "interpolation": pp.get("interpolation") or "bicubic",
        "resize_mode": pp.get("resize_mode") or "shortest",
    }
    transform = open_clip.image_transform(
        size,
        is_train=False,
        mean=pre["mean"],
        std=pre["std"],
        resize_mode=pre["resize_mode"],
        interpolation=pre["interpolation"],
    )
    transform = GreyFirst(transform)  # the same tensors; greyscale images resized as one channel
    described = {
        "kind": "open_clip.image_transform",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()},
    }
    return transform, described


def vision_tower_from(
    preset: Preset, mc: dict, pp: dict, quick_gelu: bool, state: dict, weights: Path
) -> Loaded:
    """open_clip's vision tower of model config `mc` from a full state dict (`visual.*`), loaded strictly,
    with open_clip's eval transform (preprocess config `pp`, OpenAI mean/std by default)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    visual = _build_vision_tower(mc["embed_dim"], CLIPVisionCfg(**mc["vision_cfg"]), quick_gelu=quick_gelu)
    vstate = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if not vstate:
        raise PresetError(f"model {preset.name!r}: {weights} holds no 'visual.*' tensors")
    load_strict(visual, vstate, preset.name, weights, heads=())
    unused = unused_record(k for k in state if not k.startswith("visual."))  # the text tower
    transform, described = openclip_transform(mc, pp)
    return Loaded(
        visual, transform, described, [weights], dim=int(mc["embed_dim"]),
        extra={"quick_gelu": quick_gelu, "unused_weights": unused},
    )  # fmt: skip


class _OpenClipText(nn.Module):
    """`encode_text(text)` of the full open_clip model (its text tower alone), not normalised."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        out = self.tower(text)
        return out[0] if isinstance(out, tuple) else out
