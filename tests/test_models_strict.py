"""Strict weight loading: a missing or unexpected vision weight is an error naming the key and the file;
tensors of unused heads are counted in provenance. Tiny models are built and saved by the tests."""

from __future__ import annotations

import pytest
import torch
from cbmir.models import load_encoder
from cbmir.models.strict import WeightsMismatchError, load_strict
from safetensors.torch import load_file, save_file
from test_models import save_hf, tiny_sam


def tiny_vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=16,
    )  # fmt: skip
    return ViTModel(cfg, add_pooling_layer=False).eval()


def _edit_safetensors(folder, drop=(), add=None):
    path = folder / "model.safetensors"
    state = load_file(path)
    for key in drop:
        del state[key]
    save_file({**state, **(add or {})}, str(path), metadata={"format": "pt"})
    return path


def test_hf_checkpoint_missing_a_vision_weight_fails_naming_key_and_file(tmp_path):
    folder = save_hf(tiny_vit(), None, tmp_path / "vit")
    key = next(k for k in load_file(folder / "model.safetensors") if "attention.query.weight" in k)
    _edit_safetensors(folder, drop=[key])
    with pytest.raises(
        WeightsMismatchError, match=rf"'vit-b16-in21k'.*{tmp_path}.*missing 1: \S*(query|q_proj)\.weight$"
    ):
        load_encoder("vit-b16-in21k", checkpoint=folder)


def test_hf_checkpoint_with_an_unknown_vision_weight_fails(tmp_path):
    folder = save_hf(tiny_vit(), None, tmp_path / "vit")
    _edit_safetensors(folder, add={"encoder.layer.7.output.dense.weight": torch.zeros(32, 64)})
    with pytest.raises(WeightsMismatchError, match=r"unexpected 1: \S*\b7\.\S*weight$"):
        load_encoder("vit-b16-in21k", checkpoint=folder)


def test_hf_unused_heads_are_listed_in_provenance(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    vit = tiny_vit()
    folder = save_hf(vit, None, tmp_path / "vit")
    _edit_safetensors(
        folder, add={"pooler.dense.weight": torch.zeros(32, 32), "pooler.dense.bias": torch.zeros(32)}
    )
    assert load_encoder("vit-b16-in21k", checkpoint=folder).provenance["unused_weights"] == {"pooler": 2}

    cfg = ViTMAEConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_intermediate_size=32,
    )  # fmt: skip
    mae = ViTMAEForPreTraining(cfg).eval()
    unused = load_encoder("vit-mae-b", checkpoint=save_hf(mae, None, tmp_path / "mae")).provenance[
        "unused_weights"
    ]
    assert set(unused) == {"decoder"} and unused["decoder"] == sum(
        1 for k in mae.state_dict() if k.startswith("decoder.")
    )


def test_sam_decoders_are_listed_and_may_be_absent(tmp_path):
    model = tiny_sam()
    folder = save_hf(model, None, tmp_path / "sam")
    unused = load_encoder("sam-vit-b", checkpoint=folder).provenance["unused_weights"]
    assert {"mask_decoder", "prompt_encoder"} <= set(unused) and "vision_encoder" not in unused
    state = load_file(folder / "model.safetensors")
    _edit_safetensors(folder, drop=[k for k in state if k.startswith("mask_decoder.")])
    unused = load_encoder("sam-vit-b", checkpoint=folder).provenance["unused_weights"]
    assert "mask_decoder (not in the checkpoint)" in unused
    key = next(k for k in state if k.startswith("vision_encoder.neck."))
    _edit_safetensors(folder, drop=[key])
    with pytest.raises(WeightsMismatchError, match=rf"missing 1: {key.split('.', 1)[0]}\.neck\."):
        load_encoder("sam-vit-b", checkpoint=folder)


def test_load_strict_names_missing_unexpected_and_misshapen_tensors():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = module.state_dict()
    text = {"text_model.embeddings.weight": torch.zeros(5, 2), "logit_scale": torch.zeros(())}
    assert load_strict(module, {**state, **text}, "m", "w.pt") == {"logit_scale": 1, "text_model": 1}
    with pytest.raises(WeightsMismatchError, match=r"'m'.*w\.pt.*missing 1: 1\.bias"):
        load_strict(module, {k: v for k, v in state.items() if k != "1.bias"}, "m", "w.pt")
    with pytest.raises(WeightsMismatchError, match=r"w\.pt.*unexpected 1: 2\.weight"):
        load_strict(module, {**state, "2.weight": torch.zeros(1)}, "m", "w.pt")
    with pytest.raises(WeightsMismatchError, match=r"w\.pt.*size mismatch for 0\.weight"):
        load_strict(module, {**state, "0.weight": torch.zeros(4, 4)}, "m", "w.pt")
