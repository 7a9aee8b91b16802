"""The model registry: typed presets (read from `presets.yaml`) and the loader families that build them.

A spec string is `PRESET`, `PRESET:ARG` (a preset whose family takes an argument, e.g. `raw-pixels:16`) or
`PREFIX:ARG` (a family's generic form, e.g. `timm:NAME`). Each loader family is one `LoaderFamily` subclass in
a module of `cbmir.models.loaders`, registered with `@register_family`; it declares how it locates its weights
and how it loads them, and which spec forms it answers to. The grammar, `locate_weights` and `load_encoder`
all read that one table.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

from cbmir.errors import CbmirError

from .transforms import Preprocessing
from .weights import ModelUnavailableError


class PresetError(CbmirError, ValueError):
    """A preset in presets.yaml, or a model spec, is malformed (the message names the preset and the key)."""


class Preset(BaseModel):
    """One model of the zoo: what it is, where its weights come from and how it embeds an image."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    title: str  # what it stands for in the benchmark
    loader: str  # the LoaderFamily that builds it
    source: str  # the checkpoint the loader asks for: HF repo, ARCH@TAG, package/path, file name
    embedding: str  # the embedding rule, in words
    dim: PositiveInt | None  # embedding dimension with the default weights (None: known only once loaded)
    input_size: PositiveInt | None = None  # side of the square input tensor (None: set by the checkpoint)
    behaviour: Literal["correct", "paper"] = "correct"
    paper_model: str | None = None  # the model's name in Denner et al. when it is one of the paper's nine
    licence: str = "unknown"
    weights: str  # where to get the weights (shown by `cbmir models` and docs/models.md)
    options: dict[str, Any] = {}  # loader-specific settings, checked by the family's `Options`
    preprocess: Preprocessing | None = None  # the checkpoint's preprocessing, when the checkpoint ships none
    # images per forward pass by default, sized for a 24-80 GB GPU (halved on out-of-memory; configs override)
    batch_size: PositiveInt = 128
    local_files: tuple[str, ...] = ()  # looked for under $CBMIR_CACHE/weights/ when no checkpoint is given
    notes: str = ""
    # datasets the weights were (pre)trained on, from the model card or paper ("unknown" where not known; empty:
    # no trained weights); cbmir.models.overlap matches them against a benchmark's test sets
    pretraining_data: tuple[str, ...] = ("unknown",)
    # a published list of the training images (file and where it is published), for exclude_pretraining_images
    training_images: str | None = None

    @property
    def family(self) -> LoaderFamily:
        """The loader family that builds this preset."""
        return family(self.loader)

    def option(self, key: str) -> Any:
        """A loader option, with the family's default."""
        return self.family.options(self)[key]


class WeightsLocation(NamedTuple):
    """Whether a preset's default weights are on this machine, and where (or what is missing)."""

    found: bool
    where: str


@dataclass
class Loaded:
    """What a family's `load` returns; `load_encoder` alone turns it into an `Encoder`.

    `module` maps a `[B, C, H, W]` batch to `[B, dim]`; `transform` maps a PIL image to `[C, H, W]`;
    `preprocessing` describes that transform; `weight_files` are hashed into provenance; `weights_from`
    says where they came from (default: the files); `dim` defaults to the width of a probe image's output.
    """

    module: torch.nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    preprocessing: dict[str, Any]
    weight_files: list[Path] = field(default_factory=list)
    weights_from: str | list[str] | None = None
    dim: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # image-text models: builds the cbmir.models.text.TextTower on first use (image extraction never loads it)
    text: Callable[[], Any] | None = None


class LoaderFamily(ABC):
    """How one family of models locates and loads its weights. Subclass, set `name`, `@register_family`."""

    name: ClassVar[str]  # the `loader` value in presets.yaml
    prefix: ClassVar[str | None] = None  # answers generic specs `PREFIX:ARG` (e.g. "timm")
    spec_forms: ClassVar[tuple[str, ...]] = ()  # the spec forms it accepts, for help and error messages
    offline: ClassVar[bool] = False  # weights ship inside installed packages, or none are needed
    Options: ClassVar[type[BaseModel] | None] = None  # the typed `options` of its presets

    def has_text(self, preset: Preset) -> bool:
        """Whether `load` also builds a text encoder (image-text families override this)."""
        return False

    def options(self, preset: Preset) -> dict[str, Any]:
        """The preset's options validated by `Options`, defaults filled in."""
        if self.Options is None:
            if preset.options:
                raise PresetError(f"preset {preset.name!r}: loader {self.name!r} takes no options")
            return {}
        try:
            return self.Options.model_validate(preset.options).model_dump()
        except ValidationError as err:
            raise PresetError(f"preset {preset.name!r}: options: {_errors(err)}") from err

    def generic(self, arg: str, spec: str) -> Preset:
        """The preset for `PREFIX:ARG` (families with a `prefix` override this)."""
        raise PresetError(f"model spec {spec!r}: loader {self.name!r} has no generic form")

    def with_argument(self, preset: Preset, arg: str, spec: str) -> Preset:
        """The preset for `PRESET:ARG` (families that take an argument override this)."""
        raise PresetError(f"model spec {spec!r}: preset {preset.name!r} takes no ':ARG'")

    @abstractmethod
    def locate(self, preset: Preset) -> WeightsLocation:
        """Where the preset's default weights are on this machine. Never downloads."""

    @staticmethod
    def locate_local_file(preset: Preset) -> WeightsLocation:
        """`locate` for weights kept as a file under `$CBMIR_CACHE/weights/` (the preset's `local_files`)."""
        from .weights import find_local_file

        hit = find_local_file(preset.local_files)
        if hit:
            return WeightsLocation(True, str(hit))
        name = preset.local_files[0] if preset.local_files else preset.source
        return WeightsLocation(False, f"$CBMIR_CACHE/weights/{name} or --checkpoint")

    @abstractmethod
    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        """Build the model from its default weights or from `checkpoint` (file or folder). Never downloads."""

    def missing(self, preset: Preset, what: str, how: str = "") -> ModelUnavailableError:
        """The error for weights that are not here: names the preset, its source and how to provide them."""
        return ModelUnavailableError(
            f"model {preset.name!r} needs {what} (source {preset.source!r}), not found on this machine, and "
            f"nothing is downloaded. Get: {preset.weights}. {how or 'Or pass checkpoint=PATH (CLI: --checkpoint PATH).'}"
        )


_FAMILIES: dict[str, LoaderFamily] = {}


def register_family(cls: type[LoaderFamily]) -> type[LoaderFamily]:
    """Class decorator: add one instance of a `LoaderFamily` to the registry under `cls.name`."""
    if cls.name in _FAMILIES and type(_FAMILIES[cls.name]) is not cls:
        raise ValueError(f"two loader families named {cls.name!r}")
    _FAMILIES[cls.name] = cls()
    return cls


@cache
def _import_loaders() -> None:
    from . import loaders

    for info in pkgutil.iter_modules(loaders.__path__):
        importlib.import_module(f"{loaders.__name__}.{info.name}")


def families() -> dict[str, LoaderFamily]:
    """Every registered loader family, by name (each module of `cbmir.models.loaders` is imported once)."""
    _import_loaders()
    prefixes = [f.prefix for f in _FAMILIES.values() if f.prefix]
    if len(prefixes) != len(set(prefixes)):
        raise ValueError(f"loader families share a spec prefix: {sorted(prefixes)}")
    return dict(_FAMILIES)


def family(name: str) -> LoaderFamily:
    """The loader family called `name`; raises `PresetError` listing the known ones."""
    table = families()
    if name not in table:
        raise PresetError(f"unknown loader {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def _errors(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(entry)'}: {e['msg']}" for e in err.errors())


def parse_presets(table: Any, source: str = "presets.yaml") -> dict[str, Preset]:
    """Validate a presets table (name -> fields) into `Preset` records; errors name the preset and the key."""
    if not isinstance(table, dict):
        raise PresetError(f"{source}: expected a mapping of preset name -> fields")
    out = {}
    prefixes = {f.prefix for f in families().values() if f.prefix}
    for name, fields in table.items():
        if not isinstance(fields, dict):
            raise PresetError(f"{source}: preset {name!r} must be a mapping of fields")
        if ":" in str(name) or name in prefixes:
            raise PresetError(f"{source}: preset name {name!r} clashes with the spec grammar")
        try:
            preset = Preset.model_validate({**fields, "name": name})
        except ValidationError as err:
            raise PresetError(f"{source}: preset {name!r}: {_errors(err)}") from err
        if preset.loader not in families():
            raise PresetError(
                f"{source}: preset {name!r}: loader: unknown {preset.loader!r}; known: {', '.join(sorted(families()))}"
            )
        if preset.dim is None:
            raise PresetError(f"{source}: preset {name!r}: dim: a preset must declare its dimension")
        try:
            preset.family.options(preset)
        except PresetError as err:
            raise PresetError(f"{source}: {err}") from err
        out[name] = preset
    return out


@cache
def presets() -> dict[str, Preset]:
    """All presets, keyed by name (read once from the package's presets.yaml and validated)."""
    text = resources.files("cbmir.models").joinpath("presets.yaml").read_text()
    return parse_presets(yaml.safe_load(text))


def spec_forms() -> list[str]:
    """Every spec form accepted besides a plain preset name, e.g. `raw-pixels:N`, `timm:NAME`."""
    return [form for fam in families().values() for form in fam.spec_forms]


def resolve_spec(spec: str) -> Preset:
    """The `Preset` a spec string stands for (its `name` is the spec). Raises `PresetError` on a bad spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise PresetError(f"model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    table = presets()
    if spec in table:
        return table[spec]
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in table:
        if not arg:
            raise PresetError(f"model spec {spec!r}: empty argument after ':'")
        preset = table[prefix]
        return preset.family.with_argument(preset, arg, spec)
    by_prefix = {f.prefix: f for f in families().values() if f.prefix}
    if sep and arg and prefix in by_prefix:
        return by_prefix[prefix].generic(arg, spec)
    raise PresetError(
        f"unknown model spec {spec!r}: use a preset ({', '.join(table)}) or {', '.join(spec_forms())}"
    )


def locate_weights(spec: str | Preset) -> WeightsLocation:
    """Whether the default weights of a spec or preset are on this machine, and where. Never downloads."""
    preset = resolve_spec(spec) if isinstance(spec, str) else spec
    return preset.family.locate(preset)
