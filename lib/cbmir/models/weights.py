"""Safe weight loading, hashing and the local weights cache (`$CBMIR_CACHE`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from cbmir.errors import CbmirError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class ModelUnavailableError(CbmirError, RuntimeError):
    """The weights a model needs are not on this machine (and nothing may be downloaded)."""


class CheckpointNotFoundError(CbmirError, FileNotFoundError):
    """A checkpoint path given by the user does not exist, or a checkpoint folder holds no weights file."""


def cache_dir() -> Path:
    """`$CBMIR_CACHE`, default `~/.cache/cbmir`: converted weights and user-supplied checkpoints."""
    return Path(os.environ.get("CBMIR_CACHE", Path.home() / ".cache" / "cbmir")).expanduser()


def weights_dir() -> Path:
    """Where presets look for checkpoint files named in `local_files` (`$CBMIR_CACHE/weights`)."""
    return cache_dir() / "weights"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or .bin/.pth/.pt with `torch.load(weights_only=True)`.

    Common wrappers (`{"model": ...}`, `{"state_dict": ...}`, `{"model_state_dict": ...}`) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"checkpoint {path}: unsupported suffix {path.suffix!r}; use one of {WEIGHT_SUFFIXES}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"checkpoint {path} cannot be read safely (weights_only=True): {err}") from err
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    return obj


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of one file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: Iterable[str | Path]) -> dict[str, str]:
    """`{portable path: sha256}` for the weight files that were loaded."""
    return {portable_path(p): sha256_file(p) for p in paths}


def portable_path(path: str | Path) -> str:
    """A path as it can be recorded in provenance and committed reports, without this machine's prefixes.

    Files inside an installed package become `<site-packages>/...`, files in the weights cache
    `$CBMIR_CACHE/...`, files under the working directory relative paths, files under home `~/...`.
    """
    p = Path(path).expanduser().absolute()
    parts = p.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return str(Path(f"<{marker}>", *parts[parts.index(marker) + 1 :]))
    for base, label in ((cache_dir().absolute(), "$CBMIR_CACHE"), (Path.cwd(), None), (Path.home(), "~")):
        try:
            rel = p.relative_to(base)
        except ValueError:
            continue
        return str(rel) if label is None else f"{label}/{rel}"
    return str(p)


def weight_files_in(folder: str | Path) -> list[Path]:
    """Weight files directly inside a folder (safetensors first)."""
    folder = Path(folder)
    found = [p for suffix in WEIGHT_SUFFIXES for p in sorted(folder.glob(f"*{suffix}"))]
    return found


def first_weight_file(checkpoint: Path, name: str) -> Path:
    """`checkpoint` itself if it is a file, else the first weights file inside the folder."""
    path = checkpoint if checkpoint.is_file() else next(iter(weight_files_in(checkpoint)), None)
    if path is None:
        raise CheckpointNotFoundError(
            f"model {name!r}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) in {checkpoint}"
        )
    return path


def converted_weights(name: str, source: Path, convert: Callable[[Path], dict[str, torch.Tensor]]) -> Path:
    """Convert `source` once into `$CBMIR_CACHE/converted/<name>-<sha16>.safetensors` and return that path.

    The file name carries the source's SHA-256, so a changed source is converted again; written atomically.
    """
    from safetensors.torch import save_file

    digest = sha256_file(source)
    cached = cache_dir() / "converted" / f"{name}-{digest[:16]}.safetensors"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        save_file(convert(source), str(tmp), metadata={"source_sha256": digest})
        tmp.replace(cached)
    return cached


def find_local_file(names: Iterable[str]) -> Path | None:
    """First of `names` (relative to `weights_dir()`) that exists."""
    for name in names:
        candidate = weights_dir() / name
        if candidate.exists():
            return candidate
    return None


def hf_cached_file(repo: str, filenames: Iterable[str], cache: str | Path | None = None) -> Path | None:
    """Path of the first of `filenames` of HF `repo` present in the local HF cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo, name, cache_dir=str(cache) if cache else None)
        if isinstance(hit, str):
            return Path(hit)
    return None
