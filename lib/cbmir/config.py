"""Report configurations: which manifest, data and models a run covers (`configs/*.yaml`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cbmir.errors import CbmirError

REPO_ROOT = Path(__file__).resolve().parents[2]  # lib/cbmir/config.py -> repository root
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


class ConfigError(CbmirError, ValueError):
    """A configuration file is missing a key or has a value of the wrong kind."""


@dataclass
class NotebookEntry:
    name: str
    per_model: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportConfig:
    """One report run. Relative paths are resolved against `root` (the folder that holds `configs/`)."""

    name: str
    manifest: Path
    data_root: Path
    work_dir: Path
    models: list[str]
    notebooks: list[NotebookEntry]
    root: Path
    path: Path
    thumbs_root: Path | None = None
    description: str = ""
    k: int = 100
    index_type: str = "flat"
    # builder parameters of index_type (cbmir.search), e.g. {nprobe: 192}
    index_params: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    bf16: bool = False
    bootstrap: int = 1000
    seed: int = 0
    max_per_class: int | None = None  # subsample per (split, label): quick runs
    out_root: Path | None = None  # where reports/ and figures/ go (default: root)
    notebooks_dir: Path = NOTEBOOKS_DIR
    checkpoints: dict[str, Path] = field(default_factory=dict)  # model spec -> local weights file or folder
    quick: bool = False

    @property
    def reports_dir(self) -> Path:
        return (self.out_root or self.root) / "reports" / self.name

    @property
    def figures_dir(self) -> Path:
        return (self.out_root or self.root) / "figures" / self.name


_REQUIRED = ("name", "manifest", "data_root", "work_dir", "models", "notebooks")
_PATH_KEYS = ("manifest", "data_root", "work_dir", "thumbs_root", "notebooks_dir")


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
    try:
        raw = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{cfg_path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: expected a mapping at the top level")
    quick_section = raw.pop("quick", {}) or {}
    if quick:
        raw.update(quick_section)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"{cfg_path}: missing key(s) {missing}")
    known = {f.name for f in fields(ReportConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{cfg_path}: unknown key(s) {unknown}; known: {sorted(known - {'root', 'path'})}")
    if not isinstance(raw["models"], list) or not raw["models"]:
        raise ConfigError(f"{cfg_path}: 'models' must be a non-empty list of model specs")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(raw["name"])):
        raise ConfigError(f"{cfg_path}: 'name' must be letters, digits, '.', '_' or '-' (it names folders)")
    root = config_root(cfg_path)
    for key in _PATH_KEYS:
        if raw.get(key) is not None:
            raw[key] = _resolve(root, raw[key])
    raw["notebooks"] = [_notebook_entry(cfg_path, e) for e in raw["notebooks"]]
    checkpoints = raw.get("checkpoints") or {}
    if not isinstance(checkpoints, dict):
        raise ConfigError(f"{cfg_path}: 'checkpoints' must map model specs to local weight paths")
    raw["checkpoints"] = {str(spec): _resolve(root, path) for spec, path in checkpoints.items()}
    _check_index(cfg_path, raw)
    if out_root is not None:
        raw["out_root"] = Path(out_root).resolve()
        raw["work_dir"] = raw["out_root"] / "work" / raw["name"]
    return ReportConfig(root=root, path=cfg_path, quick=quick, **raw)


def _check_index(cfg_path: Path, raw: dict[str, Any]) -> None:
    """`index_type` and `index_params` must name a cbmir.search builder and its parameters."""
    from cbmir.search import check_index_params

    params = raw.get("index_params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{cfg_path}: 'index_params' must map parameter names to values (got {params!r})")
    raw["index_params"] = params
    try:
        check_index_params(str(raw.get("index_type", "flat")), params)
    except ValueError as err:
        raise ConfigError(f"{cfg_path}: {err}") from err


def _resolve(root: Path, value: str | Path) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (root / p).resolve()


def _notebook_entry(cfg_path: Path, entry: Any) -> NotebookEntry:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{cfg_path}: each notebook entry needs a 'name' (got {entry!r})")
    return NotebookEntry(**entry)


def slug(text: str) -> str:
    """A file-name-safe form of a model spec: `open_clip:ViT-B-16@openai` -> `open_clip-ViT-B-16-openai`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
