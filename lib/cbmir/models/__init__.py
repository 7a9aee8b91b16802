"""The model zoo: `load_encoder(spec)` for presets, timm / open_clip / Hugging Face names and offline encoders.

Presets are data (`presets.yaml`), validated into `Preset` records (`registry`); each loader family lives in
one module of `loaders/`. `list_models()` shows the presets and whether their weights are on this machine.
Nothing here downloads weights: a missing model raises `ModelUnavailableError` saying what to provide.
"""

from __future__ import annotations

from .base import Encoder
from .listing import describe_encoder, list_models, models_listing, models_markdown, update_models_doc
from .load import build_encoder, load_encoder
from .registry import (
    Loaded,
    LoaderFamily,
    Preset,
    PresetError,
    families,
    family,
    locate_weights,
    presets,
    register_family,
    resolve_spec,
)
from .text import NoTextTowerError, TextTower, has_text_tower
from .weights import CheckpointNotFoundError, ModelUnavailableError, cache_dir

__all__ = [
    "CheckpointNotFoundError",
    "Encoder",
    "Loaded",
    "LoaderFamily",
    "ModelUnavailableError",
    "NoTextTowerError",
    "Preset",
    "PresetError",
    "build_encoder",
    "cache_dir",
    "describe_encoder",
    "families",
    "family",
    "list_models",
    "load_encoder",
    "locate_weights",
    "models_listing",
    "models_markdown",
    "presets",
    "register_family",
    "TextTower",
    "has_text_tower",
    "resolve_spec",
    "update_models_doc",
]
