"""`load_encoder`: a spec string -> its `Encoder`, built in one place for every loader family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cbmir.installed import library_versions

from .base import Encoder
from .registry import Loaded, Preset, PresetError, presets, resolve_spec
from .weights import CheckpointNotFoundError, hash_files, portable_path


def _probe_dim(loaded: Loaded) -> int:
    with torch.no_grad():
        x = loaded.transform(Image.new("RGB", (64, 64), (128, 128, 128)))[None]
        return int(loaded.module.eval()(x).shape[-1])


def build_encoder(preset: Preset, loaded: Loaded, checkpoint: Path | None = None) -> Encoder:
    """The `Encoder` for a preset and what its family loaded, with the full provenance record.

    With the default weights (no `checkpoint`) the output width must equal the preset's declared `dim`.
    """
    module = loaded.module.eval()
    dim = loaded.dim if loaded.dim is not None else _probe_dim(loaded)
    if checkpoint is None and preset.dim is not None and dim != preset.dim:
        raise PresetError(f"preset {preset.name!r} declares dim {preset.dim} but its weights give {dim}")
    files = [Path(f) for f in loaded.weight_files]
    if loaded.weights_from is not None:
        weights_from: Any = loaded.weights_from
    elif len(files) == 1:
        weights_from = portable_path(files[0])
    else:
        weights_from = [portable_path(f) for f in files]
    base_name = preset.name.partition(":")[0]
    provenance: dict[str, Any] = {
        "spec": preset.name,
        "preset": base_name if base_name in presets() else None,
        "title": preset.title,
        "loader": preset.loader,
        "source": preset.source,
        "embedding_rule": preset.embedding,
        "behaviour": preset.behaviour,
        "paper_model": preset.paper_model,
        "dim": int(dim),
        "checkpoint": portable_path(checkpoint) if checkpoint is not None else None,
        "preprocessing": loaded.preprocessing,
        "weights_from": weights_from,
        "weights_sha256": hash_files(files),
        **loaded.extra,
        "versions": library_versions(),
    }
    return Encoder(
        spec=preset.name,
        module=module,
        transform=loaded.transform,
        dim=int(dim),
        embedding_rule=preset.embedding,
        provenance=provenance,
        text_loader=loaded.text,
    )


def load_encoder(spec: str, checkpoint: str | Path | None = None, device: str = "cpu") -> Encoder:
    """Load an image encoder by spec, optionally from a local checkpoint (file or folder). Never downloads.

    `spec`: a preset name (see `list_models()`), `PRESET:ARG` (`raw-pixels:N`, `random-vit:TIMM_MODEL`),
    `timm:NAME`, `open_clip:ARCH@PRETRAINED`, `open_clip:hf-hub:REPO` or `hf:REPO`. `checkpoint`: a
    .safetensors/.bin/.pth file (read weights-only), a save_pretrained / open_clip folder, or a folder used as
    Hugging Face cache_dir. Missing weights raise `ModelUnavailableError` saying what to provide.
    """
    preset = resolve_spec(spec)
    ckpt = Path(checkpoint).expanduser() if checkpoint is not None else None
    if ckpt is not None and not ckpt.exists():
        raise CheckpointNotFoundError(f"model {spec!r}: checkpoint {ckpt} does not exist")
    encoder = build_encoder(preset, preset.family.load(preset, ckpt), ckpt)
    encoder.module.to(device)
    return encoder
