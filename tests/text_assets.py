"""Tiny image-text models built by the tests (random weights, tiny tokenizers), saved as their families expect."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = [
    "a", "an", "image", "of", "the", "showing", "xr", "ct", "mr", "us", "chest", "brain", "knee", "abdomen",
    "pneumonia", "normal", "tumor", "fracture", "photo", "x-ray", "scan", "no", "finding", "lung", "heart",
]  # fmt: skip


def bert_tokenizer(folder: Path, lowercase: bool = True) -> Path:
    """A WordPiece tokenizer over `WORDS` saved with save_pretrained (vocab.txt + tokenizer.json)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "-", ".", ","]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=lowercase)
    tok.save_pretrained(str(folder))
    return folder


def tiny_bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
        intermediate_size=96, max_position_embeddings=80, type_vocab_size=2,
    )  # fmt: skip


VISION_CFG = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}


def tiny_open_clip(folder: Path, hf_text: bool = False, seed: int = 0) -> Path:
    """A tiny open_clip folder (open_clip_config.json + open_clip_model.safetensors [+ tokenizer files]).

    `hf_text`: a BiomedCLIP-like CustomTextCLIP whose text tower is a tiny BERT (config saved under `bert/`,
    named by `hf_model_name`); otherwise a CLIP with open_clip's own text transformer (bundled BPE tokenizer).
    """
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if hf_text:
        bert = bert_tokenizer(folder / "bert")
        vocab = len((bert / "vocab.txt").read_text().split())
        tiny_bert_config(vocab).save_pretrained(str(bert))
        text_cfg = {
            "hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 24, "hf_model_pretrained": False,
        }  # fmt: skip
        model = open_clip.model.CustomTextCLIP(32, VISION_CFG, text_cfg)
        bert_tokenizer(folder)  # tokenizer files beside the weights, as in the BiomedCLIP repo
    else:
        text_cfg = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
        model = open_clip.model.CLIP(32, VISION_CFG, text_cfg)
    cfg = {
        "model_cfg": {"embed_dim": 32, "vision_cfg": VISION_CFG, "text_cfg": text_cfg},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def siglip_tokenizer(folder: Path) -> Path:
    """A word-level fast tokenizer (tokenizer.json) with a pad and an eos token, as SigLIP's text tower needs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tok.save_pretrained(str(folder))
    return folder


def tiny_siglip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny transformers SiglipModel saved with save_pretrained, with a tiny tokenizer beside it."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    siglip_tokenizer(folder)
    vocab = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    config = SiglipConfig(
        text_config={
            "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0, "eos_token_id": 1,
        },
        vision_config={
            "image_size": image_size, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2,
        },
    )  # fmt: skip
    SiglipModel(config).eval().save_pretrained(str(folder))
    return folder
