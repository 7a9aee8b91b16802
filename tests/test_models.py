"""Model zoo: registry, spec grammar and every loader family, with tiny models saved and loaded back
through the same code path a preset takes (no network, no real weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cbmir.models import list_models, load_encoder, presets, resolve_spec
from cbmir.models.strict import WeightsMismatchError
from PIL import Image

PAPER_PRESETS = {
    "vit-b16-in21k", "vit-mae-b", "vit-mae-b-paper", "dinov2-b14", "sam-vit-b", "medsam-vit-b",
    "biomedclip", "medclip", "resnet50", "resnet50-paper", "clip-vit-l14",
}  # fmt: skip


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]


def batch(enc, images):
    return torch.stack([enc.transform(im) for im in images])


def test_preset_table_covers_the_paper_and_is_consistent():
    table = list_models()
    assert PAPER_PRESETS <= set(table["name"])
    assert {"litemedsam", "dinov2-s14-imgfocus", "raw-pixels", "random-vit"} <= set(table["name"])
    dims = dict(zip(table["name"], table["dim"], strict=True))
    assert dims["biomedclip"] == 512 and dims["resnet50-paper"] == 1000 and dims["resnet50"] == 2048
    assert dims["sam-vit-b"] == dims["medsam-vit-b"] == 256 and dims["clip-vit-l14"] == 768
    assert set(table["weights_local"]) <= {"yes", "no"}
    assert (table.loc[table.name == "raw-pixels", "weights_local"] == "yes").all()
    assert {presets()[n].behaviour for n in ("vit-mae-b-paper", "resnet50-paper")} == {"paper"}


@pytest.mark.parametrize(
    "spec",
    ["nope", "timm:", "open_clip:ViT-B-32", "raw-pixels:x", "raw-pixels:0", "raw-pixels:", "litemedsam:3",
     "random-vit:no_such_model", "", "hf"],
)  # fmt: skip
def test_bad_specs_raise_clear_errors(spec):
    with pytest.raises(ValueError, match="spec"):
        resolve_spec(spec)


def test_missing_checkpoint_and_unsafe_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_encoder("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "nothere.pth")
    bad = tmp_path / "w.pkl"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match="w.pkl"):
        load_encoder("timm:vit_tiny_patch16_224", checkpoint=bad)


def test_spec_arguments_and_generic_forms_resolve_to_presets():
    small = resolve_spec("raw-pixels:16")
    assert (small.name, small.dim, small.input_size, small.option("size")) == ("raw-pixels:16", 256, 16, 16)
    base = resolve_spec("random-vit:vit_tiny_patch16_224")
    assert base.option("model") == "vit_tiny_patch16_224" and base.option("seed") == 0 and base.dim is None
    assert resolve_spec("timm:resnet18").loader == "timm"
    assert resolve_spec("open_clip:hf-hub:org/repo").source == "hf-hub:org/repo"
    assert resolve_spec("hf:org/repo").option("head") == "pooled_or_cls"


MISSING_PROBE = """
import json, sys
from cbmir.models import ModelUnavailableError, load_encoder, presets
out = {}
for name, preset in presets().items():
    if preset.family.offline:
        continue
    try:
        load_encoder(name)
        out[name] = ["loaded", ""]
    except Exception as err:
        out[name] = [type(err).__name__, str(err)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def missing_hub_errors(tmp_path_factory) -> dict[str, list[str]]:
    """Load every hub preset in a process whose HF cache and weights cache are empty folders."""
    import os
    import subprocess
    import sys

    empty = tmp_path_factory.mktemp("empty-caches")
    env = {**os.environ, "HF_HOME": str(empty / "hf"), "HF_HUB_CACHE": str(empty / "hf" / "hub"),
           "CBMIR_CACHE": str(empty / "cbmir"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", MISSING_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(n for n, p in presets().items() if not p.family.offline))
def test_missing_hub_model_says_what_is_needed(missing_hub_errors, name):
    kind, message = missing_hub_errors[name]
    assert kind == "ModelUnavailableError", message
    repo = presets()[name].source.removeprefix("hf-hub:")
    assert name in message and repo in message and "checkpoint" in message


# ---- Hugging Face transformers --------------------------------------------------------------------------


def save_hf(model, processor, folder):
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


def test_vit_preset_loads_a_save_pretrained_folder(tmp_path, images):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
    )
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    proc = ViTImageProcessor(size={"height": 32, "width": 32})
    enc = load_encoder("vit-b16-in21k", checkpoint=save_hf(model, proc, tmp_path / "vit"))
    x = batch(enc, images)
    assert x.shape == (2, 3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state[:, 0]
    torch.testing.assert_close(enc.embed_images(images), ref)
    assert enc.dim == 32 and len(enc.provenance["weights_sha256"]) == 1
    assert enc.provenance["preprocessing"]["kind"].startswith("ViTImageProcessor")


def test_vit_preset_loads_a_bare_safetensors_file_with_config_beside_it(tmp_path, images):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=32,
    )
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path)
    enc = load_encoder("vit-b16-in21k", checkpoint=tmp_path / "model.safetensors")
    assert enc.provenance["preprocessing"]["kind"] == "cbmir.Preprocess"  # no processor file: preset settings
    with torch.no_grad():
        ref = model(pixel_values=batch(enc, images)).last_hidden_state[:, 0]
    torch.testing.assert_close(enc.embed_images(images), ref)


def tiny_mae(tmp_path):
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEModel

    cfg = ViTMAEConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    model = ViTMAEModel(cfg).eval()
    return model, save_hf(model, ViTImageProcessor(size={"height": 32, "width": 32}), tmp_path / "mae")


def test_vit_mae_correct_mode_is_deterministic_and_unmasked(tmp_path, images):
    model, folder = tiny_mae(tmp_path)
    enc = load_encoder("vit-mae-b", checkpoint=folder)
    a, b = enc.embed_images(images), enc.embed_images(images)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert enc.provenance["mask_ratio"] == 0.0 and enc.provenance["deterministic"]
    model.config.mask_ratio = 0.0
    n = (32 // 8) ** 2
    with torch.no_grad():
        out = model(pixel_values=batch(enc, images), noise=torch.arange(n).float().expand(2, n))
    assert out.last_hidden_state.shape[1] == n + 1  # every patch kept
    torch.testing.assert_close(a, out.last_hidden_state[:, 0])


def test_vit_mae_paper_mode_keeps_random_masking(tmp_path, images):
    _, folder = tiny_mae(tmp_path)
    enc = load_encoder("vit-mae-b-paper", checkpoint=folder)
    assert enc.provenance["mask_ratio"] == pytest.approx(0.75) and not enc.provenance["deterministic"]
    assert enc.provenance["behaviour"] == "paper"
    assert not torch.allclose(enc.embed_images(images), enc.embed_images(images))


def test_dinov2_preset_takes_cls(tmp_path, images):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    model = Dinov2Model(cfg).eval()
    proc = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28})
    enc = load_encoder("dinov2-b14", checkpoint=save_hf(model, proc, tmp_path / "dino"))
    with torch.no_grad():
        ref = model(pixel_values=batch(enc, images)).last_hidden_state[:, 0]
    torch.testing.assert_close(enc.embed_images(images), ref)


@pytest.mark.parametrize(("preset", "dim"), [("resnet50", 16), ("resnet50-paper", 7)])
def test_resnet_paper_gives_logits_correct_gives_pooled_features(tmp_path, images, preset, dim):
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=7)
    model = ResNetForImageClassification(cfg).eval()
    enc = load_encoder(preset, checkpoint=save_hf(model, None, tmp_path / "rn"))
    emb = enc.embed_images(images)
    assert emb.shape == (2, dim) and enc.dim == dim
    with torch.no_grad():
        x = batch(enc, images)
        ref = (
            model(pixel_values=x).logits
            if dim == 7
            else model.resnet(pixel_values=x).pooler_output.flatten(1)
        )
    torch.testing.assert_close(emb, ref)


# ---- SAM / MedSAM ------------------------------------------------------------------------------------------


def tiny_sam():
    from transformers import SamConfig, SamModel, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16,
        output_channels=8, mlp_dim=64, global_attn_indexes=[1], window_size=2,
    )  # fmt: skip
    return SamModel(SamConfig(vision_config=vision.to_dict())).eval()


def test_sam_preset_mean_pools_the_image_embedding(tmp_path, images):
    model = tiny_sam()
    enc = load_encoder("sam-vit-b", checkpoint=save_hf(model, None, tmp_path / "sam"))
    x = batch(enc, images)
    assert x.shape == (2, 3, 64, 64)
    with torch.no_grad():
        ref = model.get_image_embeddings(x).mean(dim=(2, 3))
    torch.testing.assert_close(enc.embed_images(images), ref)
    assert enc.dim == 8


def test_medsam_preset_reads_a_segment_anything_checkpoint(tmp_path, images):
    model = tiny_sam()
    # write the vision encoder under segment-anything names, as medsam_vit_b.pth stores it
    names = {"neck.conv1.": "neck.0.", "neck.layer_norm1.": "neck.1.", "neck.conv2.": "neck.2.", "neck.layer_norm2.": "neck.3.",
             "patch_embed.projection.": "patch_embed.proj.", "layer_norm1.": "norm1.", "layer_norm2.": "norm2."}  # fmt: skip
    sa = {}
    for key, value in model.vision_encoder.state_dict().items():
        new = key.replace("layers.", "blocks.")
        for hf_name, sa_name in names.items():
            new = new.replace(hf_name, sa_name)
        sa["image_encoder." + new] = value
    sa["mask_decoder.dummy"] = torch.zeros(1)
    torch.save(sa, tmp_path / "medsam_vit_b.pth")
    enc = load_encoder("medsam-vit-b", checkpoint=tmp_path / "medsam_vit_b.pth")
    with torch.no_grad():
        ref = model.get_image_embeddings(batch(enc, images)).mean(dim=(2, 3))
    torch.testing.assert_close(enc.embed_images(images), ref)
    assert list(enc.provenance["weights_sha256"]) == [str(tmp_path / "medsam_vit_b.pth")]
    assert enc.provenance["unused_weights"] == {"mask_decoder": 1}
    del sa["image_encoder.neck.2.weight"]
    torch.save(sa, tmp_path / "medsam_vit_b.pth")
    with pytest.raises(WeightsMismatchError, match=r"medsam_vit_b\.pth .*missing 1: neck\.conv2\.weight"):
        load_encoder("medsam-vit-b", checkpoint=tmp_path / "medsam_vit_b.pth")


# ---- MedCLIP -----------------------------------------------------------------------------------------------


def test_medclip_preset_rebuilds_the_vision_tower(tmp_path, images):
    from transformers import SwinConfig, SwinModel

    cfg = SwinConfig(image_size=224, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=7)
    swin = SwinModel(cfg, add_pooling_layer=True).eval()
    proj = torch.nn.Linear(32, 8, bias=False)
    legacy = {  # MedCLIP's file was written by transformers 4.x: store the old Swin names
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
    state["vision_model.projection_head.weight"] = proj.weight.detach()
    state["text_model.projection_head.weight"] = torch.zeros(8, 4)
    (tmp_path / "medclip-vit").mkdir()
    torch.save(state, tmp_path / "medclip-vit" / "pytorch_model.bin")
    enc = load_encoder("medclip", checkpoint=tmp_path / "medclip-vit")
    with torch.no_grad():
        ref = proj(swin(pixel_values=batch(enc, images)).pooler_output)
    torch.testing.assert_close(enc.embed_images(images), ref)
    assert enc.dim == 8 and enc.provenance["unused_weights"] == {"text_model": 1}
    key = next(k for k in state if k.endswith("layernorm.weight"))
    del state[key]
    torch.save(state, tmp_path / "medclip-vit" / "pytorch_model.bin")
    with pytest.raises(WeightsMismatchError, match=r"pytorch_model\.bin .*missing 1: layernorm\.weight"):
        load_encoder("medclip", checkpoint=tmp_path / "medclip-vit")


# ---- open_clip ---------------------------------------------------------------------------------------------


def test_open_clip_preset_loads_a_local_open_clip_folder(tmp_path, images):
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    model = open_clip.CLIP(**model_cfg).eval()
    folder = tmp_path / "oc"
    folder.mkdir()
    pre = {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bicubic",
        "resize_mode": "squash",
    }
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pre}))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    enc = load_encoder("biomedclip", checkpoint=folder)
    x = batch(enc, images)
    assert x.shape == (2, 3, 32, 32)
    with torch.no_grad():
        ref = model.encode_image(x)
    torch.testing.assert_close(enc.embed_images(images), ref)
    assert enc.provenance["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    text = {k.split(".", 1)[0] for k in model.state_dict() if not k.startswith("visual.")}
    assert set(enc.provenance["unused_weights"]) == text and "transformer" in text
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "visual.proj"}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    with pytest.raises(WeightsMismatchError, match=r"open_clip_model\.safetensors .*missing 1: proj$"):
        load_encoder("biomedclip", checkpoint=folder)


# ---- timm and the baselines -------------------------------------------------------------------------------


def test_timm_spec_loads_a_local_file_and_drops_the_head(tmp_path, images):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5).eval()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    enc = load_encoder("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "w.safetensors")
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(batch(enc, images)), pre_logits=True)
    torch.testing.assert_close(enc.embed_images(images), ref)
    assert enc.dim == 192 and enc.provenance["unused_weights"] == {"head": 2}
    state = {k: v for k, v in model.state_dict().items() if k != "norm.bias"}
    save_file({**state, "blocks.99.mlp.fc1.weight": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(
        WeightsMismatchError, match=r"w\.safetensors .*missing 1: norm\.bias; unexpected 1: blocks\.9"
    ):
        load_encoder("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "w.safetensors")


@pytest.mark.slow
def test_random_vit_is_seeded_and_recorded(images):
    a, b = load_encoder("random-vit"), load_encoder("random-vit")
    assert a.provenance["seed"] == 0 and a.provenance["state_sha256"] == b.provenance["state_sha256"]
    torch.testing.assert_close(a.embed_images(images[:1]), b.embed_images(images[:1]), rtol=0, atol=0)
    assert a.dim == 384


def test_raw_pixels_default_and_configurable(images):
    enc = load_encoder("raw-pixels")
    assert enc.embed_images(images).shape == (2, 1024)
    small = load_encoder("raw-pixels:16")
    emb = small.embed_images(images)
    assert emb.shape == (2, 256) and small.dim == 256 and 0 <= emb.min() and emb.max() <= 1
    grey = (
        np.asarray(images[0].convert("L").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    )
    np.testing.assert_allclose(emb[0].numpy(), grey.ravel(), atol=1e-6)


def test_listing_is_what_cbmir_models_prints():
    from cbmir.models import models_listing

    short, wide = models_listing(), models_listing(wide=True)
    for name in presets():
        assert name in short and name in wide
    assert "weights_local" in short and "licence" not in short and "licence" in wide


def test_describe_encoder_prints_the_provenance_as_json():
    from cbmir.models import describe_encoder

    prov = json.loads(describe_encoder("raw-pixels:8"))
    assert prov["spec"] == "raw-pixels:8" and prov["preset"] == "raw-pixels" and prov["dim"] == 64
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0]


def test_portable_path_hides_machine_prefixes(tmp_path, monkeypatch):
    from cbmir.models.weights import portable_path

    monkeypatch.setenv("CBMIR_CACHE", str(tmp_path / "cache"))
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "pkg" / "w.pth"
    assert portable_path(site) == "<site-packages>/pkg/w.pth"
    assert (
        portable_path(tmp_path / "cache" / "converted" / "x.safetensors")
        == "$CBMIR_CACHE/converted/x.safetensors"
    )
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "ckpt" / "model.bin") == "ckpt/model.bin"
    assert portable_path("/elsewhere/model.bin") == "/elsewhere/model.bin"  # a user's own path stays as given
