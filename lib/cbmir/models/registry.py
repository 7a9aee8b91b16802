"""The preset table (`presets.yaml`) and the spec grammar: preset | timm:NAME | open_clip:ARCH@TAG | hf:REPO."""

from __future__ import annotations

import importlib.util
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .weights import find_local_file, hf_cached_file

REQUIRED = ("family", "loader", "source", "embedding", "dim", "behaviour", "get")


@cache
def presets() -> dict[str, dict[str, Any]]:
    """All presets, keyed by name (read once from the package's presets.yaml and checked)."""
    text = resources.files("cbmir.models").joinpath("presets.yaml").read_text()
    table = yaml.safe_load(text)
    for name, entry in table.items():
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise ValueError(f"presets.yaml: preset {name!r} lacks {missing}")
        if entry["behaviour"] not in {"correct", "paper"}:
            raise ValueError(f"presets.yaml: preset {name!r} behaviour must be 'correct' or 'paper'")
    return table


def resolve_spec(spec: str) -> dict[str, Any]:
    """A full entry (preset fields + `name`, `spec`) for a spec string. Raises ValueError on an unknown spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    table = presets()
    if spec in table:
        return {**table[spec], "name": spec, "spec": spec}
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in table and prefix == "raw-pixels":
        if not rest.isdigit():
            raise ValueError(f"model spec {spec!r}: raw-pixels:N needs an integer N")
        entry = {**table[prefix], "name": prefix, "spec": spec}
        entry["options"] = {**entry.get("options", {}), "size": int(rest)}
        entry["dim"] = int(rest) ** 2
        return entry
    generic = {"behaviour": "correct", "paper": False, "name": spec, "spec": spec, "source": rest}
    if sep and rest and prefix == "timm":
        return {
            **generic,
            "family": "timm",
            "loader": "timm",
            "dim": None,
            "embedding": "timm pooled features (num_classes=0; CLS for ViTs)",
            "get": f"timm {rest}",
        }
    if sep and rest and prefix == "open_clip":
        if "@" not in rest and not rest.startswith("hf-hub:"):
            raise ValueError(f"model spec {spec!r}: use open_clip:ARCH@PRETRAINED or open_clip:hf-hub:REPO")
        return {
            **generic,
            "family": "open_clip",
            "loader": "open_clip",
            "dim": None,
            "embedding": "encode_image (vision tower + projection)",
            "get": f"open_clip {rest}",
        }
    if sep and rest and prefix == "hf":
        return {
            **generic,
            "family": "transformers",
            "loader": "hf_generic",
            "dim": None,
            "embedding": "pooler_output if the model has one, else CLS token",
            "get": f"Hugging Face {rest}",
        }
    raise ValueError(
        f"unknown model spec {spec!r}: use a preset ({', '.join(table)}), raw-pixels:N, timm:NAME, "
        "open_clip:ARCH@PRETRAINED, open_clip:hf-hub:REPO or hf:REPO"
    )


def locate_weights(entry: dict[str, Any]) -> tuple[bool, str]:
    """(found, where) for a preset's default weights on this machine. Never downloads."""
    loader, source = entry["loader"], entry["source"]
    if loader in {"raw_pixels", "random_vit"}:
        return True, "no weights needed"
    if loader in {"litemedsam", "imgfocus", "xception"}:
        package, _, rel = source.partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return False, f"package {package} not installed"
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        return path.exists(), str(path)
    if loader in {"medsam", "medclip"}:
        hit = find_local_file(entry.get("local_files", []))
        return (
            (True, str(hit))
            if hit
            else (False, f"$CBMIR_CACHE/weights/{entry['local_files'][0]} or --checkpoint")
        )
    if loader == "open_clip":
        from .openclip import OPEN_CLIP_WEIGHTS

        if source.startswith("hf-hub:"):
            repo = source.removeprefix("hf-hub:")
        else:
            import open_clip

            arch, _, tag = source.partition("@")
            repo = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").strip("/")
        hit = hf_cached_file(repo, OPEN_CLIP_WEIGHTS) if repo else None
        return (True, str(hit)) if hit else (False, f"HF cache: {repo}")
    if loader.startswith("hf_"):
        hit = hf_cached_file(source, ["model.safetensors", "pytorch_model.bin"])
        return (True, str(hit)) if hit else (False, f"HF cache: {source}")
    return False, "unknown"
