"""Text towers of image-text presets: tiny models built here, loaded through the presets' own code paths,
must give what the original libraries give (open_clip's encode_text, transformers' SiglipModel, MedCLIP's rule)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cbmir.models import ModelUnavailableError, NoTextTowerError, has_text_tower, load_encoder, resolve_spec
from cbmir.models.load import build_encoder
from PIL import Image
from text_assets import bert_tokenizer, tiny_bert_config, tiny_open_clip, tiny_siglip

TEXTS = ["a chest x-ray showing pneumonia", "Normal brain MR", "an image of the knee"]


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))


@pytest.mark.parametrize("hf_text", [False, True])
def test_open_clip_text_equals_open_clip(tmp_path, hf_text):
    import open_clip

    folder = tiny_open_clip(tmp_path / "m", hf_text=hf_text)
    enc = load_encoder("biomedclip", checkpoint=folder)
    model = open_clip.create_model(f"local-dir:{folder}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        want = model.encode_text(tokenizer(TEXTS))
        image = enc.transform(_image())[None]
        want_image = model.encode_image(image)
    assert torch.allclose(enc.encode_text(TEXTS), want, atol=1e-6)
    assert torch.allclose(enc.module(image), want_image, atol=1e-6)
    assert enc.has_text and enc.text_tower().preprocessing["kind"] == "open_clip encode_text"
    import pickle

    pickle.dumps(enc.text_loader)  # the lazy text loader travels to worker processes


def test_open_clip_bert_config_read_off_the_shapes(tmp_path):
    """Without the HF text config on disk, the BERT config comes from the tensor shapes (64-dim heads)."""
    import open_clip

    folder = tiny_open_clip(tmp_path / "m", hf_text=True)
    want_model = open_clip.create_model(f"local-dir:{folder}").eval()
    want = want_model.encode_text(open_clip.get_tokenizer(f"local-dir:{folder}")(TEXTS)).detach()
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["hf_model_name"] = "nobody/not-in-the-cache"
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    enc = load_encoder("biomedclip", checkpoint=folder)
    assert torch.allclose(enc.encode_text(TEXTS), want, atol=1e-6)
    assert "tensor shapes" in enc.text_tower().preprocessing["hf_text_config"]


def test_open_clip_missing_tokenizer_is_named(tmp_path):
    folder = tiny_open_clip(tmp_path / "m", hf_text=True)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "nobody/no-tokenizer"
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    enc = load_encoder("biomedclip", checkpoint=folder)
    enc.embed_images([_image()])  # image embedding never needs the tokenizer
    with pytest.raises(ModelUnavailableError, match="tokenizer"):
        enc.encode_text(TEXTS)


def test_siglip_preset_equals_transformers(tmp_path):
    from transformers import AutoTokenizer, SiglipModel

    folder = tiny_siglip(tmp_path / "s")
    enc = load_encoder("siglip2-b16", checkpoint=folder)
    model = SiglipModel.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok(
        [t.lower() for t in TEXTS], padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    )
    image = enc.transform(_image())[None]
    assert image.shape[-1] == 32  # the checkpoint's own image size
    with torch.no_grad():
        want_text = model.get_text_features(input_ids=ids["input_ids"]).pooler_output
        want_image = model.get_image_features(pixel_values=image).pooler_output
    assert torch.allclose(enc.encode_text(TEXTS), want_text, atol=1e-6)
    assert torch.allclose(enc.module(image), want_image, atol=1e-6)
    assert enc.dim == 32 and enc.text_tower().preprocessing["lowercase"] is True


def test_medsiglip_preprocessing_resizes_without_antialias(tmp_path):
    from torchvision.transforms import functional as F

    folder = tiny_siglip(tmp_path / "s", image_size=48)
    enc = load_encoder("medsiglip-448", checkpoint=folder)
    image = _image(1).resize((97, 83))
    x = F.resize(F.pil_to_tensor(image), [48, 48], antialias=False).float() / 255
    assert torch.allclose(enc.transform(image), (x - 0.5) / 0.5, atol=1e-6)
    assert enc.encode_text(["normal chest"]).shape == (1, 32)


def _tiny_medclip_checkpoint(tmp_path):
    from transformers import BertModel, SwinConfig, SwinModel

    torch.manual_seed(0)
    swin = SwinModel(
        SwinConfig(image_size=224, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=7)
    )
    tok_dir = bert_tokenizer(tmp_path / "medclip" / "tokenizer", lowercase=False)
    vocab = len((tok_dir / "vocab.txt").read_text().split())
    cfg = tiny_bert_config(vocab)
    cfg.hidden_size, cfg.num_attention_heads = 64, 1
    bert = BertModel(cfg, add_pooling_layer=True)
    state = {f"vision_model.model.{k}": v for k, v in swin.state_dict().items()}
    state["vision_model.projection_head.weight"] = torch.randn(12, swin.num_features)
    state.update({f"text_model.model.{k}": v for k, v in bert.state_dict().items()})
    state["text_model.projection_head.weight"] = torch.randn(12, 64)
    state["logit_scale"] = torch.tensor(2.0)
    torch.save(state, tmp_path / "medclip" / "pytorch_model.bin")
    return tmp_path / "medclip", bert, state["text_model.projection_head.weight"], tok_dir


def test_medclip_text_follows_medclip_rule(tmp_path):
    """Slow reference: MedCLIP's forward on each text tokenised alone (unmasked token mean of hidden 1, 2, -1)."""
    from transformers import AutoTokenizer

    folder, bert, proj, tok_dir = _tiny_medclip_checkpoint(tmp_path)
    enc = load_encoder("medclip", checkpoint=folder)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    bert.eval()
    want = []
    for text in TEXTS:
        ids = tok([text], truncation=True, max_length=77, padding=True, return_tensors="pt")
        with torch.no_grad():
            hs = bert(**ids, output_hidden_states=True).hidden_states
        embed = torch.stack([hs[1], hs[2], hs[-1]]).permute(1, 0, 2, 3).mean(2).mean(1)
        want.append(embed @ proj.T)
    got = enc.encode_text(TEXTS)
    assert torch.allclose(got, torch.cat(want), atol=1e-5)
    assert got.shape == (3, 12) and enc.dim == 12
    unused = enc.text_tower().unused_weights
    assert any("pooler" in key for key in unused)


def test_unimed_clip_family_loads_its_checkpoint(tmp_path):
    """A UniMed-CLIP-style checkpoint (`module.visual.*`, `module.text_encoder.*`) of a tiny architecture."""
    import open_clip

    folder = tiny_open_clip(tmp_path / "oc", hf_text=True)
    model = open_clip.create_model(f"local-dir:{folder}").eval()
    arch = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "tiny-unimed-test.json").write_text(json.dumps({**arch, "quick_gelu": False}))
    open_clip.add_model_config(tmp_path / "cfgs")
    state = {
        "module." + (k.replace("text.", "text_encoder.", 1) if k.startswith("text.") else k): v
        for k, v in model.state_dict().items()
    }
    ckpt = tmp_path / "unimed"
    ckpt.mkdir()
    torch.save({"state_dict": state, "epoch": 3}, ckpt / "unimed_clip_vit_b16.pt")
    bert_tokenizer(ckpt / "tokenizer")
    base = resolve_spec("unimed-clip-b16")
    preset = base.model_copy(
        update={
            "options": {"arch": "tiny-unimed-test", "text_model": str(folder / "bert"), "context_length": 24}
        }
    )
    enc = build_encoder(preset, preset.family.load(preset, ckpt), ckpt)
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        want = model.encode_text(tok(TEXTS))
        image = enc.transform(_image())[None]
        want_image = model.encode_image(image)
    assert torch.allclose(enc.encode_text(TEXTS), want, atol=1e-6)
    assert torch.allclose(enc.module(image), want_image, atol=1e-6)


def test_image_only_model_has_no_text_tower():
    assert (
        not has_text_tower("raw-pixels") and has_text_tower("biomedclip") and has_text_tower("medsiglip-448")
    )
    enc = load_encoder("raw-pixels")
    assert not enc.has_text
    with pytest.raises(NoTextTowerError, match="image-only"):
        enc.encode_text(["a chest x-ray"])
