"""timm loaders: `timm:NAME` (pretrained from the HF cache or a local file) and the seeded random ViT baseline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .base import Encoder
from .weights import (
    ModelUnavailableError,
    hash_files,
    hf_cached_file,
    load_state_dict,
    portable_path,
    weight_files_in,
)


def timm_transform(model: torch.nn.Module):
    """timm's eval transform for the model's pretrained config, and that config for provenance."""
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(model)
    pre = {
        "kind": "timm.create_transform",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
    }
    return create_transform(**cfg, is_training=False), pre


def load_timm_weights(model: torch.nn.Module, path: Path, name: str) -> None:
    """Load a file into a headless timm model; only classifier tensors may be left over."""
    state = load_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = model.pretrained_cfg.get("classifier", "head")
    heads = head if isinstance(head, (list, tuple)) else [head]
    unexpected = [k for k in unexpected if not any(k.startswith(h + ".") for h in heads)]
    if missing or unexpected:
        raise ValueError(
            f"timm model {name!r}: {path} does not match: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def load_timm(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    import timm

    name = entry["source"]
    kwargs = dict(entry.get("options", {}).get("create_kwargs", {}))
    if checkpoint is None:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
        except (OSError, RuntimeError) as err:
            raise ModelUnavailableError(
                f"model {entry['name']!r}: timm weights for {name!r} are not in the local HF cache and cannot be "
                "downloaded here (HF_HUB_OFFLINE). Copy the HF cache from a machine with internet, or pass "
                f"checkpoint=FILE (.safetensors/.pth). [{type(err).__name__}: {err}]"
            ) from err
        hub = model.pretrained_cfg.get("hf_hub_id")
        cached = hf_cached_file(hub, ["model.safetensors", "pytorch_model.bin"]) if hub else None
        files, where = ([cached] if cached else []), f"timm:{name}"
    else:
        path = checkpoint if checkpoint.is_file() else next(iter(weight_files_in(checkpoint)), None)
        if path is None:
            raise FileNotFoundError(f"model {entry['name']!r}: no weights file in {checkpoint}")
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        load_timm_weights(model, path, name)
        files, where = [path], portable_path(path)
    transform, pre = timm_transform(model)
    return Encoder(
        spec=entry["spec"],
        module=model.eval(),
        transform=transform,
        dim=model.num_features,
        embedding_rule=entry["embedding"],
        provenance={"preprocessing": pre, "weights_from": where, "weights_sha256": hash_files(files)},
    )


def state_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names and bytes), e.g. to pin a random initialisation."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_random_vit(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    """A seeded randomly initialised timm ViT (CLS): the 'architecture without learning' floor."""
    import timm

    opts = entry.get("options", {})
    seed, name = int(opts.get("seed", 0)), opts.get("model", "vit_small_patch16_224")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=0)
    transform, pre = timm_transform(model)
    return Encoder(
        spec=entry["spec"],
        module=model.eval(),
        transform=transform,
        dim=model.num_features,
        embedding_rule=entry["embedding"],
        provenance={
            "preprocessing": pre,
            "seed": seed,
            "timm_model": name,
            "state_sha256": state_sha256(model),
        },
    )
