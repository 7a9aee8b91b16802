"""Full-size layout: each paper architecture built at full size with random weights by its reference library
(transformers, open_clip, timm, segment-anything), saved in its published checkpoint format, loaded through the
preset, and its embedding of one small image compared with the reference computation (the reference
library's model on the published processor's pixels). Slow (minutes on two cores): `make test` runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cbmir.models import load_encoder
from PIL import Image
from test_dinov2_positions import original_slow
from test_models_preprocessing import (
    MEDCLIP_KWARGS,
    PUBLISHED_HF,
    PUBLISHED_OPEN_CLIP,
    pixel_values,
    reference_hf,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(7).integers(0, 256, (61, 97, 3), dtype=np.uint8))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def hf_folder(model, name: str, folder: Path, bin_file: bool = False) -> Path:
    """A Hugging Face folder as published: config.json, the weights (model.safetensors, or pytorch_model.bin
    written by torch.save) and the checkpoint's preprocessor_config.json."""
    if bin_file:
        folder.mkdir(parents=True)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PUBLISHED_HF[name]))
    return folder


def close(ours: torch.Tensor, ref: torch.Tensor, atol: float = 1e-5) -> None:
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=atol)


def test_vit_b16_in21k(tmp_path, image):
    from transformers import ViTConfig, ViTModel

    model = ViTModel(ViTConfig(), add_pooling_layer=True).eval()  # the in21k checkpoint keeps its pooler
    enc = load_encoder(
        "vit-b16-in21k", checkpoint=hf_folder(model, "vit-b16-in21k", tmp_path / "m", bin_file=True)
    )
    with torch.no_grad():
        ref = model(pixel_values=pixel_values(reference_hf("vit-b16-in21k", tmp_path / "p"), image)[None])
    close(enc.embed_images([image]), ref.last_hidden_state[:, 0])
    assert enc.provenance["unused_weights"] == {"pooler": 2}


def test_vit_mae_b(tmp_path, image):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    model = ViTMAEForPreTraining(ViTMAEConfig()).eval()  # published with its decoder
    enc = load_encoder("vit-mae-b", checkpoint=hf_folder(model, "vit-mae-b", tmp_path / "m"))
    model.vit.config.mask_ratio = 0.0  # the reference: no masking (patch order is then irrelevant to the CLS)
    with torch.no_grad():
        ref = model.vit(pixel_values=pixel_values(reference_hf("vit-mae-b", tmp_path / "p"), image)[None])
    close(enc.embed_images([image]), ref.last_hidden_state[:, 0])
    assert set(enc.provenance["unused_weights"]) == {"decoder"}


def test_dinov2_b14_with_the_original_interpolation(tmp_path, image):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(image_size=518, patch_size=14, layerscale_value=1.0)  # facebook/dinov2-base
    model = Dinov2Model(config).eval()
    enc = load_encoder("dinov2-b14", checkpoint=hf_folder(model, "dinov2-b14", tmp_path / "m"))
    x = pixel_values(reference_hf("dinov2-b14", tmp_path / "p"), image)[None]
    ref = Dinov2Model(Dinov2Config(**{**config.to_dict(), "image_size": 224})).eval()
    state = dict(model.state_dict())
    pos = state["embeddings.position_embeddings"].double().numpy()
    state["embeddings.position_embeddings"] = torch.tensor(original_slow(pos, 16, 16), dtype=torch.float32)
    ref.load_state_dict(state)
    with torch.no_grad():
        close(enc.embed_images([image]), ref(pixel_values=x).last_hidden_state[:, 0], atol=1e-4)


def test_sam_vit_b(tmp_path, image):
    from transformers import SamConfig, SamModel

    model = SamModel(SamConfig()).eval()
    enc = load_encoder("sam-vit-b", checkpoint=hf_folder(model, "sam-vit-b", tmp_path / "m"))
    # a square image: no padding. HF's SAM encoder with random weights runs ~10x slower on a largely padded
    # input (value-dependent slow matmuls; see benchmarks/RESULTS.md), which only costs time here
    image = image.resize((64, 64))
    x = pixel_values(reference_hf("sam-vit-b", tmp_path / "p"), image)[None]
    with torch.no_grad():
        ref = model.get_image_embeddings(x).mean(dim=(2, 3))
    close(enc.embed_images([image]), ref)


def test_medsam_vit_b_from_a_segment_anything_file(tmp_path, image):
    from segment_anything import sam_model_registry

    sam = sam_model_registry["vit_b"]().eval()  # random weights, segment-anything's own key layout
    torch.save(sam.state_dict(), tmp_path / "medsam_vit_b.pth")
    enc = load_encoder("medsam-vit-b", checkpoint=tmp_path / "medsam_vit_b.pth")
    x = pixel_values(reference_hf("medsam-vit-b", tmp_path / "p"), image)[None]
    with torch.no_grad():  # the authors' computation: image_encoder(x) of the segment-anything model, mean
        ref = sam.image_encoder(x).mean(dim=(2, 3))
    close(enc.embed_images([image]), ref)
    assert set(enc.provenance["unused_weights"]) == {"prompt_encoder", "mask_decoder"}


def open_clip_model(name: str, quick_gelu: bool):
    """The CLIP model with the published vision tower (the text tower is a small built-in one: the loader
    reads only `visual.*`)."""
    import open_clip

    model_cfg, _ = PUBLISHED_OPEN_CLIP[name]
    text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    return open_clip.CLIP(model_cfg["embed_dim"], model_cfg["vision_cfg"], text, quick_gelu=quick_gelu).eval()


def open_clip_reference(name: str, model, image: Image.Image) -> torch.Tensor:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    model_cfg, pp = PUBLISHED_OPEN_CLIP[name]
    transform = image_transform_v2(
        PreprocessCfg(size=model_cfg["vision_cfg"]["image_size"], **pp), is_train=False
    )
    with torch.no_grad():
        return model.encode_image(transform(image)[None])


def test_biomedclip_from_an_open_clip_folder(tmp_path, image):
    model = open_clip_model("biomedclip", quick_gelu=False)
    folder = tmp_path / "biomedclip"
    folder.mkdir()
    model_cfg, pp = PUBLISHED_OPEN_CLIP["biomedclip"]
    text_cfg = {  # as published (an HF text tower, which cbmir never builds)
        "hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
        "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
        "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256,
    }  # fmt: skip
    config = {"model_cfg": {**model_cfg, "text_cfg": text_cfg}, "preprocess_cfg": pp}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    enc = load_encoder("biomedclip", checkpoint=folder)
    close(enc.embed_images([image]), open_clip_reference("biomedclip", model, image))


def test_clip_vit_l14_from_an_open_clip_file(tmp_path, image):
    model = open_clip_model("clip-vit-l14", quick_gelu=True)  # OpenAI's weights use QuickGELU
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    enc = load_encoder("clip-vit-l14", checkpoint=tmp_path / "open_clip_pytorch_model.bin")
    close(enc.embed_images([image]), open_clip_reference("clip-vit-l14", model, image))


def test_medclip_from_its_pytorch_model_bin(tmp_path, image):
    from transformers import CLIPImageProcessorPil, SwinConfig, SwinModel

    swin = SwinModel(SwinConfig(), add_pooling_layer=True).eval()  # = microsoft/swin-tiny-patch4-window7-224
    projection = torch.nn.Linear(768, 512, bias=False)
    legacy = {  # MedCLIP's file was written by transformers 4.x: its Swin names
        "attention.q_proj.": "attention.self.query.", "attention.k_proj.": "attention.self.key.",
        "attention.v_proj.": "attention.self.value.", "attention.o_proj.": "attention.output.dense.",
        "attention.relative_position_bias.relative_position_bias_table": "attention.self.relative_position_bias_table",
        "mlp.fc1.": "intermediate.dense.", "mlp.fc2.": "output.dense.",
    }  # fmt: skip
    state = {}
    for key, value in swin.state_dict().items():
        for new, old in legacy.items():
            key = key.replace(new, old)
        state[f"vision_model.model.{key}"] = value
    state["vision_model.projection_head.weight"] = projection.weight.detach()
    state["text_model.projection_head.weight"] = torch.zeros(512, 768)
    state["logit_scale"] = torch.tensor(3.0)
    (tmp_path / "medclip-vit").mkdir()
    torch.save(state, tmp_path / "medclip-vit" / "pytorch_model.bin")
    enc = load_encoder("medclip", checkpoint=tmp_path / "medclip-vit")
    x = pixel_values(CLIPImageProcessorPil(**MEDCLIP_KWARGS), image)[None]
    with torch.no_grad():
        ref = projection(swin(pixel_values=x).pooler_output)
    close(enc.embed_images([image]), ref)


@pytest.mark.parametrize("name", ["resnet50", "resnet50-paper"])
def test_resnet50(tmp_path, image, name):
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(num_labels=1000)).eval()  # = microsoft/resnet-50
    enc = load_encoder(name, checkpoint=hf_folder(model, name, tmp_path / "m", bin_file=name == "resnet50"))
    x = pixel_values(reference_hf(name, tmp_path / "p"), image)[None]
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    ref = out.logits if name == "resnet50-paper" else model.resnet(pixel_values=x).pooler_output.flatten(1)
    close(enc.embed_images([image]), ref)
    assert enc.dim == (1000 if name == "resnet50-paper" else 2048)
