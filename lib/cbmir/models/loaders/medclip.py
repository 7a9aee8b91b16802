"""The `medclip` family: MedCLIP-ViT's vision tower in transformers, Swin-T (pooled) + linear 768->512, no bias.

Text queries (on first use) load the checkpoint's `text_model.*` tensors (BioClinicalBERT + linear 768->512)
strictly, with the BioClinicalBERT tokenizer from a `tokenizer/` folder beside the weights or the HF cache.

Loads the `vision_model.*` tensors of MedCLIP's `pytorch_model.bin` (weights_only) without the medclip package,
which would download weights and pull in its text tower. The Swin config is read off the tensor shapes.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..registry import Loaded, LoaderFamily, Preset, WeightsLocation, register_family
from ..strict import WeightsMismatchError, check_keys, load_strict, unused_record
from ..text import TextTower, tokenizer_source
from ..transforms import Preprocess
from ..weights import CheckpointNotFoundError, ModelUnavailableError, find_local_file, load_state_dict


class MedCLIPVision(nn.Module):
    """`encode_image` of MedCLIP-ViT without the final L2 normalisation."""

    def __init__(self, swin: nn.Module, projection: nn.Linear):
        super().__init__()
        self.model, self.projection_head = swin, projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.model(pixel_values=x).pooler_output)


def swin_config_from_state(state: dict[str, torch.Tensor], image_size: int = 224):
    """A `SwinConfig` matching a Swin state dict (keys without the `model.` prefix)."""
    from transformers import SwinConfig

    patch = state["embeddings.patch_embeddings.projection.weight"]
    depths, heads, window = [], [], 7
    stage = 0
    while any(k.startswith(f"encoder.layers.{stage}.") for k in state):
        blocks = {int(k.split(".")[4]) for k in state if k.startswith(f"encoder.layers.{stage}.blocks.")}
        first = f"encoder.layers.{stage}.blocks.0."
        table = next(
            v for k, v in state.items() if k.startswith(first) and k.endswith("relative_position_bias_table")
        )
        depths.append(len(blocks))
        heads.append(table.shape[1])
        window = int(round((table.shape[0] ** 0.5 + 1) / 2))
        stage += 1
    return SwinConfig(
        image_size=image_size,
        patch_size=patch.shape[2],
        embed_dim=patch.shape[0],
        depths=depths,
        num_heads=heads,
        window_size=window,
    )


def build_medclip_vision(path: Path, image_size: int = 224) -> tuple[MedCLIPVision, dict[str, int]]:
    """MedCLIP-ViT vision tower from a MedCLIP `pytorch_model.bin` (or a vision-only state dict), loaded
    strictly, and the tensors it leaves unused (the text tower, the logit scale), counted by head."""
    from safetensors.torch import save_file
    from transformers import SwinModel

    state = load_state_dict(path)
    vision = (
        "vision_model.model.",
        "vision_model.projection_head.weight",
        "model.",
        "projection_head.weight",
    )
    unused = unused_record(k for k in state if not k.startswith(vision))
    state = {k.removeprefix("vision_model."): v for k, v in state.items() if not k.startswith("text_model.")}
    swin_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if "projection_head.weight" not in state or not swin_state:
        raise ValueError(
            f"{path}: no MedCLIP vision tensors (vision_model.model.* and vision_model.projection_head.weight)"
        )
    config = swin_config_from_state(swin_state, image_size)
    swin_state = {k: v for k, v in swin_state.items() if "relative_position_index" not in k}
    with tempfile.TemporaryDirectory() as tmp:  # transformers' own loader converts legacy (4.x) key names
        config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in swin_state.items()}, str(Path(tmp) / "model.safetensors"))
        swin, info = SwinModel.from_pretrained(tmp, add_pooling_layer=True, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if "relative_position_index" not in k]
    check_keys("medclip", path, missing, info["unexpected_keys"])
    weight = state["projection_head.weight"]
    projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    projection.weight.data.copy_(weight)
    return MedCLIPVision(swin, projection).eval(), unused


@register_family
class MedclipFamily(LoaderFamily):
    """A MedCLIP-ViT folder (with pytorch_model.bin) or the file itself; default `$CBMIR_CACHE/weights/<local_files>`."""

    name = "medclip"

    def has_text(self, preset: Preset) -> bool:
        return True

    def locate(self, preset: Preset) -> WeightsLocation:
        return self.locate_local_file(preset)

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        path = checkpoint or find_local_file(preset.local_files)
        if path is None:
            raise self.missing(
                preset,
                "MedCLIP-ViT's pytorch_model.bin",
                "Put the unzipped folder at $CBMIR_CACHE/weights/medclip-vit/ (default ~/.cache/cbmir/weights/) "
                "or pass checkpoint=FOLDER_OR_FILE.",
            )
        if path.is_dir():
            path = path / "pytorch_model.bin"
        if not path.exists():
            raise CheckpointNotFoundError(f"model {preset.name!r}: checkpoint {path} does not exist")
        if preset.preprocess is None:
            raise ValueError(f"preset {preset.name!r}: the medclip loader needs `preprocess`")
        pre = Preprocess(preset.preprocess)
        module, unused = build_medclip_vision(path, image_size=preset.preprocess.crop or 224)
        folder = checkpoint if checkpoint is not None and checkpoint.is_dir() else path.parent
        return Loaded(
            module, pre, pre.describe(), [path], dim=module.projection_head.out_features,
            extra={"unused_weights": unused},
            text=functools.partial(_medclip_text, path, folder, preset.name),
        )  # fmt: skip


# ---- the text tower (text-to-image retrieval) ------------------------------------------------------------
BERT_TYPE = "emilyalsentzer/Bio_ClinicalBERT"  # MedCLIP's text model (medclip.constants.BERT_TYPE)
MAX_LENGTH = 77  # MedCLIP's prompt tokenisation: tokenizer.model_max_length = 77, truncation


class MedCLIPText(nn.Module):
    """MedCLIP's `encode_text` without the L2 normalisation: BioClinicalBERT, the mean over tokens of the mean of
    hidden states 1, 2 and the last, then a linear 768 -> 512 projection without bias.

    MedCLIP averages over every position of its padded batch; here each text's own tokens are averaged (the
    attention mask), which equals MedCLIP's value for a text tokenised alone, so a text's vector does not
    depend on the other texts of its batch.
    """

    def __init__(self, bert: nn.Module, projection: nn.Linear):
        super().__init__()
        self.model, self.projection_head = bert, projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states
        layers = torch.stack([hidden[1], hidden[2], hidden[-1]]).mean(0)  # [B, L, 768]
        mask = attention_mask.unsqueeze(-1).to(layers.dtype)
        return self.projection_head((layers * mask).sum(1) / mask.sum(1).clamp(min=1))


def _medclip_text(path: Path, folder: Path, name: str) -> TextTower:
    return build_medclip_text(path, tokenizer_source(folder, BERT_TYPE), name)


def build_medclip_text(path: Path, tokenizer_dir: str | None, name: str = "medclip") -> TextTower:
    """MedCLIP's text tower from its `pytorch_model.bin` (`text_model.*`), loaded strictly, with the
    BioClinicalBERT tokenizer from local files. The BERT config is read off the tensor shapes (BERT-base)."""
    from transformers import AutoTokenizer, BertModel

    from .openclip import bert_config_from_state

    state = load_state_dict(path)
    tstate = {k.removeprefix("text_model."): v for k, v in state.items() if k.startswith("text_model.")}
    if "projection_head.weight" not in tstate:
        raise WeightsMismatchError(
            f"model {name!r}: checkpoint {path} holds no MedCLIP text tower (text_model.*)"
        )
    bert_state = {k.removeprefix("model."): v for k, v in tstate.items() if k.startswith("model.")}
    dropped = [k for k in bert_state if k.endswith("position_ids")]  # a buffer in older transformers
    bert_state = {k: v for k, v in bert_state.items() if k not in dropped}
    bert = BertModel(bert_config_from_state(bert_state, prefix=""), add_pooling_layer=True)
    unused = load_strict(bert, bert_state, name, path, heads=())
    unused = {**unused, **({"text_model.model.embeddings.position_ids (buffer)": 1} if dropped else {})}
    unused["text_model.model.pooler (not used by MedCLIP's text embedding)"] = sum(
        1 for k in bert_state if k.startswith("pooler.")
    )
    weight = tstate["projection_head.weight"]
    projection = nn.Linear(weight.shape[1], weight.shape[0], bias="projection_head.bias" in tstate)
    load_strict(projection, {k.removeprefix("projection_head."): v for k, v in tstate.items() if k.startswith("projection_head.")}, name, path, heads=())  # fmt: skip
    if tokenizer_dir is None:
        raise ModelUnavailableError(
            f"model {name!r} needs the tokenizer of {BERT_TYPE!r} (vocab.txt) to embed text; put it in a "
            "tokenizer/ folder beside pytorch_model.bin or copy its HF cache here (nothing is downloaded)"
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        batch = tokenizer(
            list(texts), truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    return TextTower(
        MedCLIPText(bert, projection).eval(),
        tokenize,
        {
            "kind": "MedCLIP encode_text (mean of hidden states 1, 2, last; token mean; linear projection)",
            "tokenizer": f"{type(tokenizer).__name__} ({BERT_TYPE})",
            "max_length": MAX_LENGTH,
        },
        [],
        unused,
    )
