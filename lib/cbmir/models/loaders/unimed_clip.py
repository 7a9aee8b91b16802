"""UniMed-CLIP: the `unimed_clip` family, the authors' open_clip fork expressed in open_clip 3.3.0.

UniMed-CLIP (mbzuai-oryx/UniMed-CLIP) trains a CLIP ViT (`ViT-B-16-quickgelu`: open_clip's classic vision
transformer with QuickGELU; `encode_image` = CLS token after `ln_post`, times `proj`) with a BiomedBERT text
encoder wrapped by open_clip's `HFTextEncoder` (CLS of the last hidden state, MLP projection 768 -> 640 -> 512, no
BERT pooler), tokenised by BiomedBERT's tokenizer with 256 tokens. Its checkpoint names the towers `visual.*` and
`text_encoder.*`; both map one-to-one onto open_clip 3.3.0's `VisionTransformer` and `HFTextEncoder`, which load
them strictly. Images: resize the shorter side to 224 (bicubic), centre crop 224, OpenAI mean/std.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import BaseModel, ConfigDict, PositiveInt

from ..registry import Loaded, LoaderFamily, Preset, WeightsLocation, register_family
from ..text import tokenizer_source
from ..weights import (
    CheckpointNotFoundError,
    find_local_file,
    hf_cached_file,
    load_state_dict,
    weight_files_in,
)
from .openclip import text_tower_from, vision_tower_from


class UnimedOptions(BaseModel):
    """The open_clip architecture, the Hugging Face text model and the text length of the checkpoint."""

    model_config = ConfigDict(extra="forbid")

    arch: str = "ViT-B-16-quickgelu"
    text_model: str = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    context_length: PositiveInt = 256
    files: list[str] = ["unimed_clip_vit_b16.pt", "unimed-clip-vit-b16.pt"]


def unimed_state(path: Path) -> dict:
    """The checkpoint's state dict with `module.` stripped and `text_encoder.` renamed to open_clip's `text.`."""
    state = load_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {
        ("text." + k.removeprefix("text_encoder.") if k.startswith("text_encoder.") else k): v
        for k, v in state.items()
    }


@register_family
class UnimedClipFamily(LoaderFamily):
    """A UniMed-CLIP `.pt` checkpoint: a file, a folder holding it, or the HF cache of `source`."""

    name = "unimed_clip"
    Options = UnimedOptions

    def has_text(self, preset: Preset) -> bool:
        return True

    def _find(self, preset: Preset, checkpoint: Path | None) -> Path | None:
        files = self.options(preset)["files"]
        if checkpoint is not None and checkpoint.is_file():
            return checkpoint
        if checkpoint is not None and checkpoint.is_dir():
            named = [checkpoint / f for f in files if (checkpoint / f).is_file()]
            return (named or weight_files_in(checkpoint) or [None])[0]
        return find_local_file(preset.local_files) or hf_cached_file(preset.source, files)

    def locate(self, preset: Preset) -> WeightsLocation:
        hit = self._find(preset, None)
        return (
            WeightsLocation(True, str(hit)) if hit else WeightsLocation(False, f"HF cache: {preset.source}")
        )

    def _config(self, preset: Preset) -> tuple[dict, bool]:
        import open_clip

        opts = self.options(preset)
        mc = open_clip.get_model_config(opts["arch"])
        if mc is None:
            raise ValueError(f"preset {preset.name!r}: unknown open_clip architecture {opts['arch']!r}")
        mc = {**mc, "text_cfg": {
            "hf_model_name": opts["text_model"], "hf_tokenizer_name": opts["text_model"],
            "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": opts["context_length"],
        }}  # fmt: skip
        return mc, bool(mc.get("quick_gelu", False))

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        path = self._find(preset, checkpoint)
        if path is None:
            raise self.missing(
                preset, f"UniMed-CLIP's checkpoint ({' or '.join(self.options(preset)['files'])})"
            )
        if not path.exists():
            raise CheckpointNotFoundError(f"model {preset.name!r}: checkpoint {path} does not exist")
        mc, quick_gelu = self._config(preset)
        state = unimed_state(path)
        loaded = vision_tower_from(preset, mc, {}, quick_gelu, state, path)
        folder = checkpoint if checkpoint is not None and checkpoint.is_dir() else path.parent
        loaded.text = functools.partial(unimed_text_tower, preset, mc, quick_gelu, path, folder)  # picklable
        return loaded


def unimed_text_tower(preset: Preset, mc: dict, quick_gelu: bool, path: Path, folder: Path):
    """UniMed-CLIP's BiomedBERT text tower from its checkpoint, tokenizer from `folder` or the HF cache."""

    def tokenizer_dir(text_cfg: dict) -> str:
        name = text_cfg["hf_tokenizer_name"]
        found = tokenizer_source(folder, name)
        if found is None:
            raise preset.family.missing(
                preset, f"the tokenizer of {name!r} (vocab.txt / tokenizer.json)",
                "Put its files in a tokenizer/ folder beside the checkpoint, or copy its HF cache here.",
            )  # fmt: skip
        return found

    return text_tower_from(preset, mc, quick_gelu, unimed_state(path), path, tokenizer_dir)
