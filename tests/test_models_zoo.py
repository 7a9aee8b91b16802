"""The newer image-only presets (RAD-DINO, DINOv3 ViT-B/16, DINOv2-L/14): tiny randomly initialised models
built here, saved in the published format (a save_pretrained folder with the processor config, as on the Hub),
loaded through each preset's own code path and compared with the reference computation (the checkpoint's own
processor, then the model's pooler output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cbmir.models import load_encoder, presets
from cbmir.models.strict import WeightsMismatchError
from cbmir.models.transforms import Preprocess
from PIL import Image
from transformers import AutoImageProcessor


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (50 + 7 * i, 61, 3), dtype=np.uint8)) for i in range(3)]


def smooth_image(seed: int, height: int, width: int) -> Image.Image:
    """A smooth RGB image (random 6x8 colours, upsampled): resampling differences stay at noise level."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    return small.resize((width, height), Image.Resampling.BICUBIC)


def reference(model, processor, images) -> torch.Tensor:
    """The model card's recipe: the checkpoint's processor, the model, its pooled (CLS) output."""
    with torch.no_grad():
        pixels = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        out = model(pixel_values=pixels)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])  # the CLS token
    return out.pooler_output


def tiny_dinov2(tmp_path, name="dino", size=28, mean=(0.5307,) * 3, std=(0.2583,) * 3):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=size, patch_size=14
    )
    model = Dinov2Model(cfg).eval()
    proc = BitImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=3,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )
    folder = tmp_path / name
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return model, AutoImageProcessor.from_pretrained(folder, backend="pil"), folder


def test_rad_dino_preset_is_the_cls_token_of_a_dinov2_with_its_own_processor(tmp_path, images):
    model, proc, folder = tiny_dinov2(tmp_path)
    enc = load_encoder("rad-dino", checkpoint=folder)
    torch.testing.assert_close(enc.embed_images(images), reference(model, proc, images))
    assert enc.dim == 32 and enc.provenance["preprocessing"]["kind"].startswith("BitImageProcessor")
    assert enc.provenance["preprocessing"]["image_mean"] == pytest.approx([0.5307] * 3)


def test_rad_dino_fallback_preprocessing_is_the_published_processor_config():
    """Without a processor file the preset's own settings apply: shortest side 518 (bicubic), crop 518."""
    from transformers import BitImageProcessorPil

    preset = presets()["rad-dino"]
    ours = Preprocess(preset.preprocess)
    proc = BitImageProcessorPil(
        size={"shortest_edge": 518},
        crop_size={"height": 518, "width": 518},
        resample=3,
        image_mean=[0.5307] * 3,
        image_std=[0.2583] * 3,
    )
    image = smooth_image(2, 300, 420)
    theirs = proc(images=image, return_tensors="pt")["pixel_values"][0]
    x = ours(image)
    assert x.shape == theirs.shape == (3, 518, 518) and preset.input_size == 518
    torch.testing.assert_close(x, theirs)  # the PIL backend: what the published processor computes


def test_dinov2_large_preset_takes_cls(tmp_path, images):
    model, proc, folder = tiny_dinov2(
        tmp_path, "dinol", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    enc = load_encoder("dinov2-l14", checkpoint=folder)
    torch.testing.assert_close(enc.embed_images(images), reference(model, proc, images))


def tiny_dinov3(tmp_path, registers=4):
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    cfg = DINOv3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=16,
        image_size=32,
        num_register_tokens=registers,
    )
    model = DINOv3ViTModel(cfg).eval()
    proc = DINOv3ViTImageProcessor(size={"height": 32, "width": 32})
    folder = tmp_path / "dinov3"
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return model, AutoImageProcessor.from_pretrained(folder, backend="pil"), folder


def test_dinov3_preset_is_the_cls_token_before_the_register_tokens(tmp_path, images):
    model, proc, folder = tiny_dinov3(tmp_path)
    enc = load_encoder("dinov3-b16", checkpoint=folder)
    emb = enc.embed_images(images)
    torch.testing.assert_close(emb, reference(model, proc, images))
    torch.testing.assert_close(emb, enc.embed_images(images), rtol=0, atol=0)  # deterministic in eval
    with torch.no_grad():
        hidden = model(
            pixel_values=proc(images=images, return_tensors="pt")["pixel_values"]
        ).last_hidden_state
    assert hidden.shape[1] == 1 + 4 + (32 // 16) ** 2  # CLS, 4 registers, patches
    assert not torch.allclose(emb, hidden[:, 1])  # not a register token


def test_dinov3_fallback_preprocessing_matches_the_processor_defaults():
    """The preset's settings restate DINOv3's processor (224x224 bilinear, ImageNet mean/std)."""
    from transformers import DINOv3ViTImageProcessor

    preset = presets()["dinov3-b16"]
    image = smooth_image(3, 300, 260)
    theirs = DINOv3ViTImageProcessor()(images=image, return_tensors="pt")["pixel_values"][0]
    x = Preprocess(preset.preprocess)(image)
    assert x.shape == theirs.shape == (3, 224, 224) and preset.input_size == 224
    assert (x - theirs).abs().mean() < 0.03


def test_dinov3_checkpoint_missing_a_weight_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _, _, folder = tiny_dinov3(tmp_path)
    state = load_file(folder / "model.safetensors")
    key = next(k for k in state if k.endswith("attention.q_proj.weight"))
    del state[key]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsMismatchError, match="q_proj"):
        load_encoder("dinov3-b16", checkpoint=folder)


@pytest.mark.parametrize("name", ["rad-dino", "dinov3-b16", "dinov2-l14"])
def test_new_presets_record_their_pretraining_data(name):
    preset = presets()[name]
    assert preset.pretraining_data and "unknown" not in preset.pretraining_data
    assert preset.loader == "hf" and preset.option("head") == "cls"
