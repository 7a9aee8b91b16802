"""Report configurations: which manifest, data and models a run covers (`configs/*.yaml`).

The YAML is parsed into `ReportConfig`, a pydantic model: unknown keys, missing keys and values of the wrong
kind are refused with a `ConfigError` that names the file and the key (`configs/radmini.yaml: index_tpye:
unknown key (did you mean 'index_type'?)`). Relative paths are resolved against the folder that holds
`configs/`. A config's `quick:` section holds overrides applied by `cbmir report --quick`; its keys are checked
as strictly as the top level's.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cbmir.errors import CbmirError

REPO_ROOT = Path(__file__).resolve().parents[2]  # lib/cbmir/config.py -> repository root
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
# Keys the loader sets itself; a config file may not set them.
_LOADER_KEYS = ("root", "path", "quick")


class ConfigError(CbmirError, ValueError):
    """A configuration file is missing a key or has a value of the wrong kind; the message names both."""


class NotebookEntry(BaseModel):
    """One notebook of a run: its name (`notebooks/<name>.ipynb`), whether it runs per model, its parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str
    per_model: StrictBool = False
    parameters: dict[str, Any] = Field(default_factory=dict)
    # per_model only: "image-text" runs it for the models with a text encoder (skipped, with the reason, if none)
    models: Literal["all", "image-text"] = "all"


class PretrainingList(BaseModel):
    """A model's published list of training images: the file and, for a CSV, the column holding the paths."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    column: str | None = None


class ReportConfig(BaseModel):
    """One report run. Relative paths are resolved against `root` (the folder that holds `configs/`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    root: Path  # set by the loader, first so that the path validators below can use it
    path: Path  # the config file
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    manifest: Path
    data_root: Path
    work_dir: Path
    models: Annotated[list[str], Field(min_length=1)]
    notebooks: Annotated[list[NotebookEntry], Field(min_length=1)]
    thumbs_root: Path | None = None
    # the dataset's data card (markdown): notebook 1 shows its sections of known caveats (`CAVEAT_SECTIONS`)
    data_card: Path | None = None
    description: str = ""
    k: PositiveInt = 100
    index_type: str = "flat"
    # builder parameters of index_type (cbmir.search), e.g. {nprobe: 192}
    index_params: dict[str, Any] = Field(default_factory=dict)
    # where test and val queries' neighbours among train come from: search (the index above) or authors (the
    # authors' published lists, their exact search, where import-authors wrote them; search for the rest)
    neighbours: Literal["search", "authors"] = "search"
    # images per forward pass: per model spec, else `batch_size` for every model, else the preset's own
    batch_size: PositiveInt | None = None
    batch_sizes: dict[str, PositiveInt] = Field(default_factory=dict)
    bf16: StrictBool = False
    # fp32 | bf16 | fp16 | auto (overrides bf16; bf16 becomes fp16 on GPUs without native bf16; auto is bf16 where
    # the device multiplies bf16 natively, else fp32)
    precision: Literal["fp32", "bf16", "fp16", "auto"] | None = None
    # DataLoader workers for extraction (default: the machine's cores but one, at most 16)
    workers: Annotated[int, Field(strict=True, ge=0)] | None = None
    # extraction engine: local (this process) or ray (Ray Data; cluster at ray_address, else RAY_ADDRESS, else a
    # local Ray runtime); needs the [ray] extra
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    # torch.compile on the CPU (cbmir.accelerate): auto compiles a model only when its run needs 10 TFLOP or
    # more in bf16 or on AMX CPUs, 40 in fp32 elsewhere (counted, not timed) and keeps it when its output
    # matches the original model's; on | off force it
    compile: Literal["auto", "on", "off"] = "auto"
    # folder for decoded, resized pixels shared by the models that resize alike (cbmir.decode_cache); the
    # vectors are the same with or without it; it holds C x H x W bytes per image and resize setting
    decode_cache: Path | None = None
    bootstrap: PositiveInt = 1000
    seed: Annotated[int, Field(strict=True)] = 0
    # subsample per (split, label): quick runs
    max_per_class: PositiveInt | None = None
    # where reports/ and figures/ go (default: root)
    out_root: Path | None = None
    notebooks_dir: Path = NOTEBOOKS_DIR
    # model spec -> local weights file or folder
    checkpoints: dict[str, Path] = Field(default_factory=dict)
    # drop from the queries every image a model's published training list names (cbmir.models.overlap);
    # pretraining_image_lists: model spec -> list file, or {path: FILE, column: NAME}
    exclude_pretraining_images: StrictBool = False
    pretraining_image_lists: dict[str, PretrainingList] = Field(default_factory=dict)
    # the run holds the paper's four datasets and splits (Denner et al., arXiv 2403.06567): notebook 8 then sets the
    # article's printed numbers beside ours and tests them; any other data keeps them apart, "not comparable"
    paper_setup: StrictBool = False
    # text-to-image retrieval prompts (cbmir.text_retrieval); empty: its DEFAULT_TEMPLATE
    prompt_templates: list[str] = Field(default_factory=list)
    quick: StrictBool = False

    def batch_size_for(self, model: str) -> int | None:
        """The batch size this config asks for `model` (None: the preset's default)."""
        return self.batch_sizes.get(model, self.batch_size)

    @property
    def reports_dir(self) -> Path:
        return (self.out_root or self.root) / "reports" / self.name

    @property
    def figures_dir(self) -> Path:
        return (self.out_root or self.root) / "figures" / self.name

    @field_validator(
        "index_params", "checkpoints", "batch_sizes", "pretraining_image_lists", "description", mode="before"
    )
    @classmethod
    def _empty_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        """A key written without a value (`checkpoints:`) means its empty default."""
        if value is None:
            return "" if info.field_name == "description" else {}
        return value

    @field_validator("notebooks", mode="before")
    @classmethod
    def _names_alone(cls, value: Any) -> Any:
        """A notebook entry may be just its name."""
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator(
        "manifest",
        "data_root",
        "work_dir",
        "thumbs_root",
        "data_card",
        "notebooks_dir",
        "out_root",
        "decode_cache",
    )
    @classmethod
    def _resolve_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(_root(info), value)

    @field_validator("checkpoints")
    @classmethod
    def _resolve_checkpoints(cls, value: dict[str, Path], info: ValidationInfo) -> dict[str, Path]:
        return {spec: _resolve(_root(info), p) for spec, p in value.items()}

    @field_validator("pretraining_image_lists", mode="before")
    @classmethod
    def _list_path_alone(cls, value: Any) -> Any:
        """A list may be given as just its path."""
        if isinstance(value, dict):
            return {k: {"path": v} if isinstance(v, str | Path) else v for k, v in value.items()}
        return value

    @field_validator("pretraining_image_lists")
    @classmethod
    def _resolve_lists(
        cls, value: dict[str, PretrainingList], info: ValidationInfo
    ) -> dict[str, PretrainingList]:
        return {m: v.model_copy(update={"path": _resolve(_root(info), v.path)}) for m, v in value.items()}

    @model_validator(mode="after")
    def _pretraining_lists_name_models(self) -> ReportConfig:
        """Lists are given for models of the run, and exclusion needs at least one list."""
        unknown = [spec for spec in self.pretraining_image_lists if spec not in self.models]
        if unknown and not self.quick:  # a quick run's shorter model list may leave some out
            raise ValueError(
                f"pretraining_image_lists: {', '.join(map(repr, unknown))} not in models {self.models}"
            )
        if self.exclude_pretraining_images and not self.pretraining_image_lists:
            raise ValueError("exclude_pretraining_images: true needs pretraining_image_lists: {MODEL: FILE}")
        return self

    @model_validator(mode="after")
    def _batch_sizes_name_models(self) -> ReportConfig:
        """Every key of `batch_sizes` must be one of `models` (a typo would silently fall back)."""
        unknown = [spec for spec in self.batch_sizes if spec not in self.models]
        if unknown:
            raise ValueError(f"batch_sizes: {', '.join(map(repr, unknown))} not in models {self.models}")
        return self

    @model_validator(mode="after")
    def _index_settings_exist(self) -> ReportConfig:
        """`index_type` and `index_params` must name a cbmir.search builder and its parameters."""
        from cbmir.search import check_index_params

        check_index_params(self.index_type, self.index_params)
        return self


def _root(info: ValidationInfo) -> Path:
    context = info.context or {}
    if "root" in context:
        return Path(context["root"])
    return Path(info.data["root"]) if "root" in info.data else Path.cwd()


def _resolve(root: Path, value: str | Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def find_project_file(path: str | Path) -> Path:
    """Resolve `path` against the working directory, then its parents (notebooks run from notebooks/)."""
    p = Path(path)
    if p.is_absolute():
        return p
    for base in [Path.cwd(), *Path.cwd().parents, REPO_ROOT]:
        if (base / p).exists():
            return (base / p).resolve()
    raise FileNotFoundError(f"{path}: not found from {Path.cwd()} or any parent folder")


def config_root(config_path: Path) -> Path:
    """The folder relative paths in a config are resolved against: the parent of `configs/`."""
    return config_path.parent.parent if config_path.parent.name == "configs" else config_path.parent


def load_config(
    path: str | Path, quick: bool = False, out_root: str | Path | None = None, **overrides: Any
) -> ReportConfig:
    """Read a YAML config; `quick` applies its `quick:` section; keyword overrides win over both."""
    cfg_path = find_project_file(path)
    shown = _shown(cfg_path)
    raw = _read_yaml(cfg_path, shown)
    quick_section = raw.pop("quick", None) or {}
    if not isinstance(quick_section, dict):
        raise ConfigError(f"{shown}: quick: must be a mapping of overrides (got {quick_section!r})")
    _refuse_unknown(shown, quick_section, prefix="quick.")
    _refuse_unknown(shown, raw)
    if quick:
        raw.update(quick_section)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    root = config_root(cfg_path)
    if out_root is not None:
        raw["out_root"] = Path(out_root).resolve()
    if raw.get("out_root") is not None and isinstance(raw.get("name"), str):
        raw["work_dir"] = _resolve(root, raw["out_root"]) / "work" / raw["name"]
    try:
        return ReportConfig.model_validate(
            {**raw, "root": root, "path": cfg_path, "quick": quick}, context={"root": root}
        )
    except ValidationError as err:
        raise ConfigError(format_errors(shown, err)) from None


def _read_yaml(cfg_path: Path, shown: str) -> dict[str, Any]:
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{shown}: not UTF-8 text (byte {err.start}); expected a YAML config") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{shown}: not valid YAML: {' '.join(str(err).split())}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown}: expected a mapping of keys at the top level (got {type(raw).__name__})")
    return raw


def _refuse_unknown(shown: str, raw: dict[str, Any], prefix: str = "") -> None:
    """Unknown keys (and keys only the loader sets), each with the closest known key where one is close."""
    known = [name for name in ReportConfig.model_fields if name not in _LOADER_KEYS]
    problems = []
    for key in raw:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
        why = "set by the loader, not by a config" if key in _LOADER_KEYS else "unknown key"
        problems.append(f"{prefix}{key}: {why}{hint}")
    if problems:
        raise ConfigError(f"{shown}: " + "; ".join(problems))


_MESSAGES = {
    "missing": "missing key",
    "extra_forbidden": "unknown key",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "string_type": "must be text",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "bool_type": "must be true or false",
    "path_type": "must be a path",
}


def format_errors(shown: str, err: ValidationError) -> str:
    """pydantic's errors as `<file>: <key>: <problem> (got <value>)`, joined with '; '."""
    parts = []
    for e in err.errors(include_url=False):
        key = _key(e["loc"])
        kind = e["type"]
        if kind == "string_pattern_mismatch" and key == "name":
            text = "must be letters, digits, '.', '_' or '-' (it names folders)"
        elif kind == "greater_than_equal":
            text = f"must be >= {e['ctx']['ge']}"
        elif kind == "too_short":
            text = "must not be empty"
        elif kind == "value_error":
            text = str(e["ctx"]["error"]) if "ctx" in e else e["msg"]
        else:
            text = _MESSAGES.get(kind, e["msg"][0].lower() + e["msg"][1:])
        if kind not in ("missing", "extra_forbidden", "value_error") and "input" in e:
            text += f" (got {e['input']!r})"
        parts.append(f"{key}: {text}" if key else text)
    return f"{shown}: " + "; ".join(parts)


def _key(loc: tuple[int | str, ...]) -> str:
    """('notebooks', 2, 'name') -> 'notebooks[2].name'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _shown(path: Path) -> str:
    """The config's path as a user would type it: relative to the working directory where possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def slug(text: str) -> str:
    """A file-name-safe form of a model spec: `open_clip:ViT-B-16@openai` -> `open_clip-ViT-B-16-openai`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
