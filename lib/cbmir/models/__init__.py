"""The model zoo: `load_encoder(spec)` for presets, timm / open_clip / Hugging Face names and offline encoders.

Presets are data (`presets.yaml`); `list_models()` shows them and whether their weights are on this machine.
Nothing here downloads weights: a missing model raises `ModelUnavailableError` saying what to provide.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .base import Encoder
from .registry import locate_weights, presets, resolve_spec
from .weights import ModelUnavailableError, cache_dir, portable_path

__all__ = [
    "Encoder",
    "ModelUnavailableError",
    "cache_dir",
    "list_models",
    "load_encoder",
    "presets",
    "resolve_spec",
]

# loader name in presets.yaml -> "module:function" (imported lazily: heavy libraries load only when used)
LOADERS = {
    "hf_vit": "hf:load_hf_vit",
    "hf_cls": "hf:load_hf_cls",
    "hf_vit_mae": "hf:load_hf_vit_mae",
    "hf_resnet": "hf:load_hf_resnet",
    "hf_sam": "hf:load_hf_sam",
    "hf_generic": "hf:load_hf_generic",
    "medsam": "sam:load_medsam",
    "medclip": "medclip:load_medclip",
    "open_clip": "openclip:load_open_clip",
    "timm": "timm_models:load_timm",
    "random_vit": "timm_models:load_random_vit",
    "litemedsam": "packaged:load_litemedsam",
    "imgfocus": "packaged:load_imgfocus",
    "xception": "packaged:load_xception",
    "raw_pixels": "baselines:load_raw_pixels",
}


def _versions() -> dict[str, str]:
    out = {}
    for lib in ("torch", "torchvision", "timm", "open_clip", "transformers", "onnxruntime"):
        try:
            out[lib] = importlib.import_module(lib).__version__
        except ImportError:
            continue
    return out


def load_encoder(spec: str, checkpoint: str | Path | None = None, device: str = "cpu") -> Encoder:
    """Load an image encoder by spec, optionally from a local checkpoint (file or folder).

    `spec`: a preset name (see `list_models()`), `raw-pixels:N`, `timm:NAME`, `open_clip:ARCH@PRETRAINED`,
    `open_clip:hf-hub:REPO` or `hf:REPO`. `checkpoint`: a .safetensors/.bin/.pth file (read weights-only), a
    save_pretrained / open_clip folder, or a folder used as Hugging Face cache_dir.
    """
    entry = resolve_spec(spec)
    ckpt = Path(checkpoint).expanduser() if checkpoint is not None else None
    if ckpt is not None and not ckpt.exists():
        raise FileNotFoundError(f"model {spec!r}: checkpoint {ckpt} does not exist")
    module_name, func = LOADERS[entry["loader"]].split(":")
    loader = getattr(importlib.import_module(f"{__name__}.{module_name}"), func)
    encoder = loader(entry, ckpt, device)
    encoder.module.to(device).eval()
    base: dict[str, Any] = {
        "spec": entry["spec"],
        "preset": entry["name"] if entry["name"] in presets() else None,
        "family": entry["family"],
        "source": entry["source"],
        "embedding_rule": encoder.embedding_rule,
        "behaviour": entry["behaviour"],
        "dim": encoder.dim,
        "checkpoint": portable_path(ckpt) if ckpt is not None else None,
        "versions": _versions(),
    }
    encoder.provenance = {**base, **encoder.provenance}
    return encoder


def list_models():
    """A DataFrame of the presets: name, family, source, embedding rule, dim, behaviour, weights found here, where."""
    import pandas as pd

    rows = []
    for name, entry in presets().items():
        found, where = locate_weights({**entry, "name": name})
        rows.append(
            {
                "name": name,
                "family": entry["family"],
                "source": entry["source"],
                "embedding": entry["embedding"],
                "dim": entry["dim"],
                "behaviour": entry["behaviour"],
                "paper": bool(entry.get("paper", False)),
                "weights_local": "yes" if found else "no",
                "where": where if found else f"missing: {where}; get: {entry['get']}",
            }
        )
    return pd.DataFrame(rows)
