"""open_clip: the `open_clip` family (`open_clip:ARCH@PRETRAINED`, `open_clip:hf-hub:REPO`): the vision tower only.

Only `visual.*` tensors are loaded into open_clip's own vision tower, so no text tower (nor its tokenizer or
Hugging Face text config) is needed; `encode_image(x)` of the full model equals `visual(x)`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..registry import Loaded, LoaderFamily, Preset, PresetError, WeightsLocation, register_family
from ..strict import load_strict, unused_record
from ..weights import (
    CheckpointNotFoundError,
    first_weight_file,
    hf_cached_file,
    load_state_dict,
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
    described = {
        "kind": "open_clip.image_transform",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()},
    }
    return transform, described


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

    def locate(self, preset: Preset) -> WeightsLocation:
        repo = hub_repo(preset.source)
        hit = hf_cached_file(repo, OPEN_CLIP_WEIGHTS) if repo else None
        return WeightsLocation(True, str(hit)) if hit else WeightsLocation(False, f"HF cache: {repo}")

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        mc, pp, quick_gelu, weights = _resolve(preset, checkpoint)
        visual = _build_vision_tower(
            mc["embed_dim"], CLIPVisionCfg(**mc["vision_cfg"]), quick_gelu=quick_gelu
        )
        state = load_state_dict(weights)
        vstate = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        if not vstate:
            raise PresetError(f"model {preset.name!r}: {weights} holds no 'visual.*' tensors")
        load_strict(visual, vstate, preset.name, weights, heads=())
        unused = unused_record(k for k in state if not k.startswith("visual."))  # the text tower
        transform, described = openclip_transform(mc, pp)
        return Loaded(
            visual,
            transform,
            described,
            [weights],
            dim=int(mc["embed_dim"]),
            extra={"quick_gelu": quick_gelu, "unused_weights": unused},
        )
