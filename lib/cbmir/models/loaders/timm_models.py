"""timm: the `timm` family (`timm:NAME`, pretrained from the HF cache or a local file) and the `random_vit` baseline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from ..registry import Loaded, LoaderFamily, Preset, PresetError, WeightsLocation, register_family
from ..strict import UNUSED_HEADS, load_strict
from ..transforms import GreyFirst
from ..weights import first_weight_file, hf_cached_file, load_state_dict, portable_path


def timm_transform(model: torch.nn.Module):
    """timm's eval transform for the model's pretrained config, and that config for provenance."""
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(model)
    pre = {
        "kind": "timm.create_transform",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
    }
    return GreyFirst(create_transform(**cfg, is_training=False)), pre


def load_timm_weights(model: torch.nn.Module, path: Path, name: str) -> dict[str, int]:
    """Load a file into a headless timm model strictly; classifier tensors left over are returned, counted."""
    head = model.pretrained_cfg.get("classifier", "head")
    heads = {h.split(".", 1)[0] for h in (head if isinstance(head, (list, tuple)) else [head])}
    return load_strict(model, load_state_dict(path), f"timm:{name}", path, UNUSED_HEADS | heads)


class TimmOptions(BaseModel):
    """`create_kwargs`: extra keyword arguments for `timm.create_model`."""

    model_config = ConfigDict(extra="forbid")

    create_kwargs: dict = {}


@register_family
class TimmFamily(LoaderFamily):
    """`timm.create_model(NAME, num_classes=0)`: timm's pooled features and its eval transform."""

    name = "timm"
    prefix = "timm"
    spec_forms = ("timm:NAME",)
    Options = TimmOptions

    def generic(self, arg: str, spec: str) -> Preset:
        return Preset(
            name=spec,
            title=f"timm {arg}",
            loader=self.name,
            source=arg,
            embedding="timm pooled features (num_classes=0; CLS for ViTs)",
            dim=None,
            weights=f"timm {arg} (its Hugging Face repo in the HF cache)",
        )

    def _hub_id(self, name: str) -> str | None:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        return getattr(cfg, "hf_hub_id", None) if cfg is not None else None

    def locate(self, preset: Preset) -> WeightsLocation:
        hub = self._hub_id(preset.source)
        hit = hf_cached_file(hub, ["model.safetensors", "pytorch_model.bin"]) if hub else None
        return (
            WeightsLocation(True, str(hit))
            if hit
            else WeightsLocation(False, f"HF cache: {hub or preset.source}")
        )

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        import timm

        name, kwargs = preset.source, dict(self.options(preset)["create_kwargs"])
        if checkpoint is None:
            try:
                model = timm.create_model(
                    name, pretrained=True, num_classes=0, **kwargs
                )  # timm loads strictly
            except (OSError, RuntimeError) as err:
                raise self.missing(
                    preset,
                    f"timm weights for {name!r} in the local HF cache",
                    "Copy the HF cache from a machine with internet, or pass checkpoint=FILE (.safetensors/.pth). "
                    f"[{type(err).__name__}: {err}]",
                ) from err
            hub = model.pretrained_cfg.get("hf_hub_id")
            cached = hf_cached_file(hub, ["model.safetensors", "pytorch_model.bin"]) if hub else None
            files, where = ([cached] if cached else []), f"timm:{name}"
        else:
            path = first_weight_file(checkpoint, preset.name)
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
            unused = load_timm_weights(model, path, name)
            files, where = [path], portable_path(path)
        transform, pre = timm_transform(model)
        extra = {"unused_weights": unused} if checkpoint is not None else {}
        return Loaded(model, transform, pre, files, where, model.num_features, extra)


def state_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names and bytes), e.g. to pin a random initialisation."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RandomVitOptions(BaseModel):
    """`model`: a timm model name; `seed`: the torch seed of its random initialisation."""

    model_config = ConfigDict(extra="forbid")

    model: str = "vit_small_patch16_224"
    seed: int = 0


@register_family
class RandomVitFamily(LoaderFamily):
    """A seeded randomly initialised timm model (CLS for ViTs): the 'architecture without learning' floor."""

    name = "random_vit"
    spec_forms = ("random-vit:TIMM_MODEL",)
    offline = True
    Options = RandomVitOptions

    def with_argument(self, preset: Preset, arg: str, spec: str) -> Preset:
        import timm

        if not timm.is_model(arg):
            raise PresetError(f"model spec {spec!r}: {arg!r} is not a timm model name")
        return preset.model_copy(
            update={
                "name": spec,
                "options": {**preset.options, "model": arg},
                "source": f"timm {arg} (random init)",
                "embedding": f"timm pooled features of a seeded randomly initialised {arg}",
                "dim": None,
                "input_size": None,
            }
        )

    def locate(self, preset: Preset) -> WeightsLocation:
        return WeightsLocation(True, "no weights needed (seeded random init)")

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        import timm

        if checkpoint is not None:
            raise PresetError(f"model {preset.name!r}: a random baseline takes no checkpoint")
        opts = self.options(preset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opts["seed"])
            model = timm.create_model(opts["model"], pretrained=False, num_classes=0)
        transform, pre = timm_transform(model)
        extra = {"seed": opts["seed"], "timm_model": opts["model"], "state_sha256": state_sha256(model)}
        return Loaded(model, transform, pre, [], "no weights (seeded random init)", model.num_features, extra)
