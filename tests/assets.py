"""Where the packages that carry test images and weights live (skip the test if one is not installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def package_dir(name: str) -> Path:
    """The folder of installed package `name`, located without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name} not installed")
    return Path(list(spec.submodule_search_locations)[0])
