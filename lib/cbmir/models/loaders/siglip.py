"""SigLIP: the `siglip` family (MedSigLIP, SigLIP 2 fixed-resolution checkpoints) in transformers' `SiglipModel`.

Image embedding: `get_image_features(pixel_values).pooler_output`, the vision tower's attention-pooling (MAP)
head output, before the L2 normalisation of the contrastive loss. Text embedding (on first use):
`get_text_features(input_ids).pooler_output` with the text padded to `max_length` tokens, as SigLIP was trained
(no attention mask; SigLIP 2 lower-cases the text). Weights and tokenizer from the HF cache or a
save_pretrained folder only; every vision and text weight must be filled (strict loading).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from ..registry import Loaded, LoaderFamily, Preset, WeightsLocation, register_family
from ..text import TextTower, tokenizer_source
from ..transforms import Preprocess
from ..weights import hf_cached_file
from .hf import HF_WEIGHT_FILES, check_hf_loading, from_pretrained


class SiglipOptions(BaseModel):
    """`max_length`: tokens every text is padded or cut to; `lowercase`: lower-case texts first (SigLIP 2)."""

    model_config = ConfigDict(extra="forbid")

    max_length: PositiveInt = 64
    lowercase: bool = False


class SiglipImage(nn.Module):
    """`get_image_features(pixel_values).pooler_output` (not normalised)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=x).pooler_output


class SiglipText(nn.Module):
    """`get_text_features(input_ids).pooler_output` (not normalised)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.text_model = model.text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids=input_ids).pooler_output


def _image_size(model: nn.Module) -> int:
    return int(model.config.vision_config.image_size)


def siglip_tokenizer(preset: Preset, checkpoint: Path | None, opts: dict):
    """The checkpoint's tokenizer from local files (never downloads), as a `texts -> {"input_ids"}` function."""
    from transformers import AutoTokenizer

    folder = checkpoint if checkpoint is not None and checkpoint.is_dir() else None
    cache = None if folder is None or (folder / "config.json").exists() else folder
    source = tokenizer_source(folder if cache is None else None, None)
    if source is None:
        hit = hf_cached_file(
            preset.source, ["tokenizer.json", "spiece.model", "tokenizer_config.json"], cache
        )
        source = str(Path(hit).parent) if hit else None
    if source is None:
        raise preset.family.missing(
            preset, f"the tokenizer of {preset.source!r} (tokenizer.json or spiece.model)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, ImportError) as err:
        raise preset.family.missing(
            preset,
            f"a tokenizer loadable from {source} ({type(err).__name__}: {err}; a spiece.model alone needs the "
            "sentencepiece package)",
        ) from err

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        texts = [t.lower() for t in texts] if opts["lowercase"] else list(texts)
        batch = tokenizer(
            texts, padding="max_length", max_length=opts["max_length"], truncation=True, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"]}

    return tokenize, type(tokenizer).__name__


def siglip_text_tower(model: nn.Module, preset: Preset, checkpoint: Path | None, opts: dict) -> TextTower:
    """The text tower of a loaded SiglipModel with its tokenizer (from local files)."""
    tokenize, kind = siglip_tokenizer(preset, checkpoint, opts)
    return TextTower(
        SiglipText(model),
        tokenize,
        {
            "kind": "SiglipModel.get_text_features pooler_output",
            "tokenizer": kind,
            "padding": f"max_length {opts['max_length']}",
            "lowercase": opts["lowercase"],
        },
        [],
    )


@register_family
class SiglipFamily(LoaderFamily):
    """transformers SiglipModel checkpoints (vision + text), from the HF cache or a save_pretrained folder."""

    name = "siglip"
    Options = SiglipOptions

    def has_text(self, preset: Preset) -> bool:
        return True

    def locate(self, preset: Preset) -> WeightsLocation:
        hit = hf_cached_file(preset.source, HF_WEIGHT_FILES)
        return (
            WeightsLocation(True, str(hit)) if hit else WeightsLocation(False, f"HF cache: {preset.source}")
        )

    def _model(self, preset: Preset, checkpoint: Path | None):
        from transformers import SiglipModel

        model, files, where, info = from_pretrained(SiglipModel, preset.name, preset.source, checkpoint)
        unused = check_hf_loading(preset.name, where, info, used="")  # vision and text: every weight filled
        return model.eval(), files, where, unused

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        if preset.preprocess is None:
            raise ValueError(f"preset {preset.name!r}: the siglip loader needs `preprocess`")
        model, files, where, unused = self._model(preset, checkpoint)
        size = _image_size(model)  # the checkpoint's own input size (448 for MedSigLIP)
        pre = Preprocess(preset.preprocess.model_copy(update={"resize": size}))
        opts = self.options(preset)

        return Loaded(
            SiglipImage(model), pre, pre.describe(), files, where, int(model.config.vision_config.hidden_size),
            extra={"unused_weights": unused},
            text=functools.partial(siglip_text_tower, model, preset, checkpoint, opts),  # picklable
        )  # fmt: skip
