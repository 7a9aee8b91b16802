"""Where the packages that carry test images and weights live (skip the test if one is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cbmir.installed import find_package_dir


def package_dir(name: str) -> Path:
    """The folder of installed package `name`, located without importing it; skip the test if it is absent."""
    path = find_package_dir(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path
