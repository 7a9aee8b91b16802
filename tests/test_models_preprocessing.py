"""Preprocessing parity: each paper preset's transform against the reference processor its checkpoint was
published with, built here from the published config (written out below; nothing is downloaded), on images
of awkward sizes. Hugging Face processors are transformers' PIL backend, which computes what they computed
at publication."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cbmir.models import presets
from cbmir.models.loaders.hf import processor_or_preset, sam_transform
from cbmir.models.loaders.openclip import openclip_transform
from cbmir.models.transforms import Preprocess, center_crop_floor
from PIL import Image

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# preprocessor_config.json of each Hugging Face checkpoint, as published
PUBLISHED_HF = {
    "vit-b16-in21k": {  # google/vit-base-patch16-224-in21k
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224,
    },
    "vit-mae-b": {  # facebook/vit-mae-base
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor", **IMAGENET,
        "resample": 3, "size": 224,
    },
    "dinov2-b14": {  # facebook/dinov2-base
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_processor_type": "BitImageProcessor",
        **IMAGENET, "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256},
    },
    "resnet50": {  # microsoft/resnet-50
        "crop_pct": 0.875, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "ConvNextFeatureExtractor", **IMAGENET, "resample": 3, "size": 224,
    },
    "sam-vit-b": {  # facebook/sam-vit-base (the authors preprocess MedSAM with it too)
        "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
        **IMAGENET, "image_processor_type": "SamImageProcessor", "pad_size": {"height": 1024, "width": 1024},
        "processor_class": "SamProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 1024},
    },
}  # fmt: skip
PUBLISHED_HF |= {"vit-mae-b-paper": PUBLISHED_HF["vit-mae-b"], "resnet50-paper": PUBLISHED_HF["resnet50"]}
PUBLISHED_HF["medsam-vit-b"] = PUBLISHED_HF["sam-vit-b"]

# MedCLIP has no processor config: the authors' CLIPFeatureExtractor arguments with medclip.constants'
# IMG_MEAN / IMG_STD (their do_pad_square is not a CLIP processor argument and did nothing)
MEDCLIP_KWARGS = {
    "do_resize": True, "size": 224, "resample": 3, "do_center_crop": True, "crop_size": 224,
    "do_normalize": True, "image_mean": 0.5862785803043838, "image_std": 0.27950088968644304,
    "do_convert_rgb": False,
}  # fmt: skip

# open_clip: BiomedCLIP's open_clip_config.json; open_clip's own pretrained config for ViT-L-14 'openai'
PUBLISHED_OPEN_CLIP = {
    "biomedclip": (
        {"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                                          "timm_pool": "", "timm_proj": "linear", "image_size": 224}},
        {"mean": OPENAI_MEAN, "std": OPENAI_STD},
    ),
    "clip-vit-l14": (
        {"embed_dim": 768, "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14}},
        {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"},
    ),
}  # fmt: skip

SIZES = [(293, 171), (1001, 37), (37, 1001), (13, 9), (5, 600), (257, 513), (224, 224), (511, 510)]  # (w, h)


@pytest.fixture(scope="module")
def awkward() -> list[Image.Image]:
    """Seeded noise (every pixel independent, so a one-pixel shift shows) and one smooth gradient per size."""
    rng = np.random.default_rng(0)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]
    for w, h in SIZES[:3]:
        yy, xx = np.mgrid[0:h, 0:w]
        grad = ((xx * 255 / max(w - 1, 1) + yy * 97 / max(h - 1, 1)) % 256).astype(np.uint8)
        out.append(Image.fromarray(np.stack([grad, grad[::-1], 255 - grad], axis=-1)))
    return out


def pixel_values(processor, image: Image.Image) -> torch.Tensor:
    return torch.as_tensor(np.asarray(processor(images=image, return_tensors="pt")["pixel_values"][0]))


def reference_hf(name: str, folder: Path):
    """The PIL-backend processor built from the published preprocessor_config.json."""
    from transformers import AutoImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(PUBLISHED_HF[name]))
    return AutoImageProcessor.from_pretrained(str(folder), backend="pil")


def assert_same(ours, reference, images, atol: float = 0.0) -> None:
    for image in images:
        a, b = ours(image), reference(image)
        assert a.shape == b.shape, image.size
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m, s=image.size: f"{s}: {m}")


def test_the_published_configs_cover_every_paper_preset():
    paper = {n for n, p in presets().items() if p.paper_model}
    assert paper == set(PUBLISHED_HF) | set(PUBLISHED_OPEN_CLIP) | {"medclip"}


@pytest.mark.parametrize("name", sorted(set(PUBLISHED_HF) - {"sam-vit-b", "medsam-vit-b"}))
def test_preset_preprocess_equals_the_published_processor(name, awkward, tmp_path):
    """The preset's own transform (used when a checkpoint ships no processor config) is the processor's."""
    ref = reference_hf(name, tmp_path)
    assert_same(Preprocess(presets()[name].preprocess), lambda im: pixel_values(ref, im), awkward)


@pytest.mark.parametrize("name", ["vit-b16-in21k", "dinov2-b14", "resnet50"])
def test_a_checkpoints_processor_config_is_run_on_the_pil_backend(name, awkward, tmp_path):
    ref = reference_hf(name, tmp_path / "ref")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps(PUBLISHED_HF[name]))
    transform, described = processor_or_preset(presets()[name], folder)
    assert described["kind"].endswith("Pil")
    assert_same(transform, lambda im: pixel_values(ref, im), awkward)


@pytest.mark.parametrize("name", ["sam-vit-b", "medsam-vit-b"])
def test_sam_transforms_equal_the_sam_processor(name, awkward, tmp_path):
    ref = reference_hf(name, tmp_path)
    preset = presets()[name]
    if name == "sam-vit-b":
        ours = sam_transform(preset, None)[0]
    else:  # what the medsam loader builds for a 1024-px encoder
        ours = Preprocess(preset.preprocess.model_copy(update={"resize": 1024, "pad_to": 1024}))
    assert_same(ours, lambda im: pixel_values(ref, im), awkward)


def test_medclip_preset_equals_the_authors_clip_processor(awkward):
    from transformers import CLIPImageProcessorPil

    ref = CLIPImageProcessorPil(**MEDCLIP_KWARGS)
    assert_same(Preprocess(presets()["medclip"].preprocess), lambda im: pixel_values(ref, im), awkward)


@pytest.mark.parametrize("name", sorted(PUBLISHED_OPEN_CLIP))
def test_open_clip_presets_equal_open_clips_own_preprocessing(name, awkward):
    """Against the transform open_clip's factory builds (`image_transform_v2` from the merged config)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    model_cfg, pp = PUBLISHED_OPEN_CLIP[name]
    ref = image_transform_v2(PreprocessCfg(size=model_cfg["vision_cfg"]["image_size"], **pp), is_train=False)
    assert_same(openclip_transform(model_cfg, pp)[0], ref, awkward)
    if name == "clip-vit-l14":  # the loader reads these settings from open_clip's registry
        import open_clip

        registered = open_clip.get_pretrained_cfg("ViT-L-14", "openai")
        assert {k: list(v) if isinstance(v, tuple) else v for k, v in registered.items() if k in pp} == pp


def center_crop_slow(x: np.ndarray, size: int) -> np.ndarray:
    """Hugging Face's centre crop written pixel by pixel: output (i, j) is input (top + i, left + j) after
    zero-padding a short side by ceil(missing / 2) before it."""
    c, h, w = x.shape
    pad_top, pad_left = -(-max(size - h, 0) // 2), -(-max(size - w, 0) // 2)
    top = (max(h, size) - size) // 2 if h >= size else (h - size) // 2 + pad_top
    left = (max(w, size) - size) // 2 if w >= size else (w - size) // 2 + pad_left
    out = np.zeros((c, min(size, max(h, size)), min(size, max(w, size))), x.dtype)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            si, sj = top + i - pad_top, left + j - pad_left
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = x[:, si, sj]
    return out


@pytest.mark.parametrize(
    ("h", "w", "size"), [(9, 12, 4), (10, 13, 4), (7, 7, 7), (3, 8, 6), (5, 2, 4), (2, 2, 5)]
)
def test_center_crop_rounds_down_like_hf(h, w, size):
    from transformers.image_transforms import center_crop

    x = np.random.default_rng(h * 100 + w).integers(1, 256, (3, h, w), dtype=np.uint8)
    ours = center_crop_floor(torch.from_numpy(x), size).numpy()
    np.testing.assert_array_equal(ours, center_crop_slow(x, size))
    np.testing.assert_array_equal(ours, center_crop(x, (size, size), input_data_format="channels_first"))


# ------------------------------------------------------------------------ greyscale images as one channel
def greys() -> list[Image.Image]:
    """Seeded greyscale noise ("L") at awkward sizes, smaller and larger than every crop."""
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)) for w, h in SIZES + [(31, 9)]]


def assert_grey_path_is_exact(transform) -> None:
    """`transform` on an "L" image gives exactly the tensor it gives for the image's RGB conversion."""
    assert transform.accepts_grey
    for image in greys():
        a, b = transform(image), transform(image.convert("RGB"))
        assert a.shape == b.shape, image.size
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, s=image.size: f"{s}: {m}")


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {
            "resize": 37,
            "interpolation": "bicubic",
            "crop": 32,
            "mean": [0.4, 0.5, 0.6],
            "std": [0.2, 0.3, 0.1],
        },
        {"resize": 40, "resize_mode": "shortest", "crop": 33, "interpolation": "nearest"},
        {"resize": 41, "resize_mode": "longest", "pad_to": 48, "scale": "minmax"},
        {"resize": 30, "antialias": False, "interpolation": "bilinear", "crop": 29},
    ],
)
def test_preprocess_resizes_a_greyscale_image_as_one_channel_exactly(settings):
    assert_grey_path_is_exact(Preprocess(settings))


@pytest.mark.parametrize("name", sorted(n for n, p in presets().items() if p.preprocess is not None))
def test_every_presets_preprocess_takes_greyscale_images_exactly(name):
    assert_grey_path_is_exact(Preprocess(presets()[name].preprocess.model_copy(update={"resize": 45})))


@pytest.mark.parametrize("name", sorted(PUBLISHED_OPEN_CLIP))
def test_open_clip_transforms_take_greyscale_images_exactly(name):
    model_cfg, pp = PUBLISHED_OPEN_CLIP[name]
    cfg = {**model_cfg, "vision_cfg": {**model_cfg["vision_cfg"], "image_size": 36}}
    assert_grey_path_is_exact(openclip_transform(cfg, pp)[0])


def test_timm_transform_and_grey_pixels_take_greyscale_images_exactly():
    import timm
    from cbmir.models.loaders.baselines import GreyPixels
    from cbmir.models.loaders.timm_models import timm_transform

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=48, num_classes=0)
    transform = timm_transform(model)[0]
    assert len(transform.head.transforms) == 2  # timm's Resize and CenterCrop run on the one channel
    assert_grey_path_is_exact(transform)
    assert_grey_path_is_exact(GreyPixels(7))


def test_grey_first_keeps_a_step_that_mixes_channels_after_the_rgb_conversion():
    from cbmir.models.transforms import GreyFirst
    from torchvision import transforms as T

    mixing = T.Compose([T.Grayscale(num_output_channels=3), T.Resize(20), T.PILToTensor()])
    wrapped = GreyFirst(mixing)
    assert len(wrapped.head.transforms) == 0
    assert_grey_path_is_exact(wrapped)
