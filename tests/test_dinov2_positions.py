"""DINOv2 position-embedding interpolation: the original rule (scale factor (grid + 0.1) / M, as in
facebookresearch/dinov2 and transformers 4.39) against a slow bicubic written from its definition, and its
use by the `dinov2-b14` preset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cbmir.models import load_encoder, presets
from cbmir.models.dinov2_positions import interpolate_original
from cbmir.models.registry import PresetError
from PIL import Image

A = -0.75  # the cubic-convolution constant of PyTorch's (and PIL's) bicubic


def keys_kernel(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return (A + 2) * x**3 - (A + 3) * x**2 + 1
    if x < 2:
        return A * x**3 - 5 * A * x**2 + 8 * A * x - 4 * A
    return 0.0


def bicubic_by_scale_slow(grid: np.ndarray, scale_h: float, scale_w: float) -> np.ndarray:
    """[M, M, D] -> [floor(M * scale_h), floor(M * scale_w), D]: output pixel i samples the input at
    (i + 0.5) / scale - 0.5 with the 4 x 4 cubic-convolution taps, indices clamped at the border."""
    m_h, m_w, d = grid.shape
    out_h, out_w = math.floor(m_h * scale_h), math.floor(m_w * scale_w)
    out = np.zeros((out_h, out_w, d))
    for i in range(out_h):
        y = (i + 0.5) / scale_h - 0.5
        for j in range(out_w):
            x = (j + 0.5) / scale_w - 0.5
            acc = np.zeros(d)
            for ky in range(math.floor(y) - 1, math.floor(y) + 3):
                for kx in range(math.floor(x) - 1, math.floor(x) + 3):
                    weight = keys_kernel(y - ky) * keys_kernel(x - kx)
                    acc += weight * grid[min(max(ky, 0), m_h - 1), min(max(kx, 0), m_w - 1)]
            out[i, j] = acc
    return out


def original_slow(pos: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The DINOv2 code's rule on [1, 1 + M*M, D]: class token kept, patch grid scaled by (n + 0.1) / M."""
    m = math.isqrt(pos.shape[1] - 1)
    grid = pos[0, 1:].reshape(m, m, -1)
    patches = bicubic_by_scale_slow(grid, (rows + 0.1) / m, (cols + 0.1) / m)
    return np.concatenate([pos[:, :1], patches.reshape(1, rows * cols, -1)], axis=1)


@pytest.mark.parametrize(("m", "rows", "cols"), [(37, 16, 16), (7, 4, 4), (7, 5, 3), (4, 9, 6), (6, 6, 2)])
def test_original_interpolation_matches_the_slow_reference(m, rows, cols):
    rng = np.random.default_rng(m * 100 + rows * 10 + cols)
    pos = rng.normal(size=(1, 1 + m * m, 6))
    ours = interpolate_original(torch.tensor(pos, dtype=torch.float32), rows, cols)
    np.testing.assert_allclose(ours.numpy(), original_slow(pos, rows, cols), rtol=0, atol=2e-5)


def test_the_original_rule_is_not_transformers_5s_target_size_rule():
    """At the paper's 224 px (16 x 16 patches from DINOv2's 37 x 37 grid) the two rules differ."""
    pos = torch.tensor(np.random.default_rng(0).normal(size=(1, 1 + 37 * 37, 4)), dtype=torch.float32)
    grid = pos[:, 1:].reshape(1, 37, 37, 4).permute(0, 3, 1, 2)
    by_size = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    by_size = by_size.permute(0, 2, 3, 1).reshape(1, 256, 4)
    assert (interpolate_original(pos, 16, 16)[:, 1:] - by_size).abs().max() > 1e-2


def test_a_grid_that_is_not_square_is_refused():
    with pytest.raises(ValueError, match="square"):
        interpolate_original(torch.zeros(1, 1 + 12, 4), 3, 3)


def tiny_dinov2(folder):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7
    )
    model = Dinov2Model(cfg).eval()
    model.save_pretrained(folder)  # no processor config: the preset's preprocessing (224 px)
    return model


def reference_cls(model, x: torch.Tensor) -> torch.Tensor:
    """The CLS token of a copy of `model` built for x's size with the slow-interpolated position embeddings,
    so that transformers interpolates nothing."""
    from transformers import Dinov2Model

    grid = x.shape[-1] // model.config.patch_size
    ref = Dinov2Model(model.config.__class__(**{**model.config.to_dict(), "image_size": x.shape[-1]})).eval()
    state = dict(model.state_dict())
    pos = state["embeddings.position_embeddings"].double().numpy()
    state["embeddings.position_embeddings"] = torch.tensor(
        original_slow(pos, grid, grid), dtype=torch.float32
    )
    ref.load_state_dict(state)
    with torch.no_grad():
        return ref(pixel_values=x).last_hidden_state[:, 0]


def test_dinov2_preset_uses_the_original_interpolation(tmp_path):
    assert presets()["dinov2-b14"].options["pos_interpolation"] == "original"
    model = tiny_dinov2(tmp_path / "dino")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (61, 90, 3), dtype=np.uint8)) for _ in range(2)]
    enc = load_encoder("dinov2-b14", checkpoint=tmp_path / "dino")
    x = torch.stack([enc.transform(im) for im in images])
    assert x.shape[-1] == 224
    torch.testing.assert_close(enc.embed_images(images), reference_cls(model, x), rtol=0, atol=1e-5)
    assert enc.provenance["pos_interpolation"] == "original"
    with torch.no_grad():  # transformers 5's own rule gives other numbers
        theirs = model(pixel_values=x).last_hidden_state[:, 0]
    assert (theirs - enc.embed_images(images)).abs().max() > 1e-4


def test_original_interpolation_on_a_model_without_dinov2_embeddings_is_a_preset_error(tmp_path, monkeypatch):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=16)).save_pretrained(tmp_path / "vit")  # fmt: skip
    vit = presets()["vit-b16-in21k"]
    bad = vit.model_copy(update={"options": {**vit.options, "pos_interpolation": "original"}})
    monkeypatch.setitem(presets(), "vit-b16-in21k", bad)
    with pytest.raises(PresetError, match=r"vit-b16-in21k.*pos_interpolation"):
        load_encoder("vit-b16-in21k", checkpoint=tmp_path / "vit")
