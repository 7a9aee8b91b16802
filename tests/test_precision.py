"""Precision and worker defaults: what runs for each request on each device (CPU-testable parts)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cbmir import precision as P
from cbmir.extract import extract_embeddings
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _embed_worker import tiny_encoder  # noqa: E402


@pytest.mark.parametrize(
    ("precision", "bf16", "device", "native", "expected"),
    [
        (None, False, "cpu", True, "fp32"),
        (None, True, "cpu", True, "bf16"),
        ("fp32", True, "cpu", True, "fp32"),  # precision wins over the bf16 flag
        ("bf16", False, "cuda", True, "bf16"),
        ("bf16", False, "cuda:1", False, "fp16"),  # emulated bf16 is slow: fp16 instead
        (None, True, "cuda", False, "fp16"),
        ("fp16", False, "cuda", True, "fp16"),
        ("fp32", False, "cuda", False, "fp32"),
    ],
)
def test_resolve_precision(monkeypatch, precision, bf16, device, native, expected):
    calls = []

    def supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    if expected == "fp16" and precision != "fp16":
        with pytest.warns(UserWarning, match="no native bf16"):
            assert P.resolve_precision(precision, bf16, device) == expected
    else:
        assert P.resolve_precision(precision, bf16, device) == expected
    assert all(c is False for c in calls)  # asks for native support, never emulation


@pytest.mark.parametrize(("device", "native", "expected"), [
    ("cpu", True, "bf16"), ("cpu", False, "fp32"), ("cuda", True, "bf16"), ("cuda:0", False, "fp32"),
])  # fmt: skip
def test_auto_precision_is_bf16_only_where_native(monkeypatch, device, native, expected):
    import cbmir.accelerate as acc

    monkeypatch.setattr(acc, "cpu_info", lambda: {"native_bf16": native})
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    assert P.resolve_precision("auto", False, device) == expected
    assert P.resolve_precision("auto", True, device) == expected  # auto wins over the bf16 flag


def test_bad_precisions_name_the_parameter():
    with pytest.raises(
        P.PrecisionError, match=r"'precision' is 'fp8'; allowed \['fp32', 'bf16', 'fp16', 'auto'\]"
    ):
        P.resolve_precision("fp8", False, "cpu")
    with pytest.raises(P.PrecisionError, match=r"'fp16', which runs on CUDA only \(device 'cpu'\)"):
        P.resolve_precision("fp16", False, "cpu")


@pytest.mark.parametrize(("cores", "expected"), [(1, 0), (2, 1), (16, 15), (17, 16), (128, 16)])
def test_default_workers_follow_the_usable_cores(monkeypatch, cores, expected):
    monkeypatch.setattr(P.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert P.default_workers() == expected
    assert P.decode_threads() == min(cores, 16)


def test_extraction_records_precision_and_workers(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    manifest = pd.DataFrame({"filepath": [f"{i}.png" for i in range(3)]})
    store = extract_embeddings(
        manifest, tmp_path, tiny_encoder(), tmp_path / "s", num_workers=0, device="cpu"
    )
    prov = store.provenance
    assert (prov["dtype"], prov["tf32"], prov["num_workers"], prov["bf16"]) == ("fp32", False, 0, False)
    store = extract_embeddings(
        manifest, tmp_path, tiny_encoder(), tmp_path / "b", num_workers=0, device="cpu", precision="bf16"
    )
    assert store.provenance["dtype"] == "bf16" and store.provenance["precision"] != "fp32"
    with pytest.raises(P.PrecisionError, match="CUDA only"):
        extract_embeddings(manifest, tmp_path, tiny_encoder(), tmp_path / "c", device="cpu", precision="fp16")
    store = extract_embeddings(
        manifest, tmp_path, tiny_encoder(), tmp_path / "d", device="cpu", num_workers=1
    )
    assert store.provenance["loader"]["decode"] == "1 DataLoader worker(s), beside the forward pass"


def test_encoder_embed_images_leaves_a_shared_module_where_it_is(monkeypatch):
    encoder = tiny_encoder()
    moved = []
    original = encoder.module.to
    monkeypatch.setattr(encoder.module, "to", lambda *a, **kw: moved.append(a) or original(*a, **kw))
    images = [Image.new("RGB", (12, 12), (i * 40, 0, 0)) for i in range(3)]
    out = encoder.embed_images(images)
    assert not moved and out.shape == (3, encoder.dim)
    torch.testing.assert_close(encoder.embed_images(images, device="cpu"), out)
    assert moved == [("cpu",)]


def test_loader_settings_keep_batches_in_flight_within_the_host_share():
    gib = 2**30
    # reference: in flight = workers x prefetch x batch <= host / 8, prefetch in {1, 2}; pin only if it fits
    for workers, batch, host in [(4, gib // 8, 64 * gib), (15, gib, 128 * gib), (8, gib, 8 * gib), (0, 1, 0)]:
        s = P.loader_settings(workers, batch, True, host)
        prefetch = s.get("prefetch_factor", 1)
        if host:
            fits_two = max(1, workers) * batch * 2 <= host // 8
            assert prefetch == (2 if fits_two else 1)
            assert s["pin_memory"] == (max(1, workers) * batch * prefetch <= host // 8)
        else:
            assert s == {"pin_memory": True}  # unknown host memory: torch's defaults
    # SAM at the old batch 256: 256 x 3 x 1024 x 1024 x 4 B = 3 GiB per batch, 15 workers on a 128 GiB host
    s = P.loader_settings(15, 256 * 3 * 1024 * 1024 * 4, True, 128 * gib)
    assert s == {"pin_memory": False, "prefetch_factor": 1}
    assert P.loader_settings(2, 8 * 3 * 1024 * 1024 * 4, True, 128 * gib) == {
        "pin_memory": True,
        "prefetch_factor": 2,
    }
    assert P.loader_settings(3, gib, False, 128 * gib)["pin_memory"] is False  # never pinned off CUDA
