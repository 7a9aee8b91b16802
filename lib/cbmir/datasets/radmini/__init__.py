"""RadMini: the offline default dataset, real radiology images that ship inside registry packages.

`build(out_dir, manifest_path, ...)` writes 8-bit PNGs under `out_dir/<source>/`, thumbnails under
`out_dir/thumbs/`, the manifest (paper schema, labels `MODALITY/region/finding`) and its data card.
CLI: `cbmir radmini build --out data/radmini --manifest data_splits/radmini.csv [--no-debian --no-npm]`.
"""

from __future__ import annotations

from cbmir.datasets.radmini.builder import SOURCES, build, select_sources, to_manifest
from cbmir.datasets.radmini.card import data_card, write_data_card
from cbmir.datasets.radmini.splits import assign_splits

__all__ = [
    "SOURCES",
    "assign_splits",
    "build",
    "data_card",
    "select_sources",
    "to_manifest",
    "write_data_card",
]
