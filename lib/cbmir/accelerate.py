"""Fast inference on CPU without changing what an encoder computes: one entry point, `optimise_for_inference`.

Each step rewrites a private copy of the encoder's module (the caller's module is never touched) and is kept only
if the output still matches the original on a random batch (cosine >= `FP32_MIN_COSINE` in fp32):

- `fuse_conv_bn`    : every Conv2d whose output goes straight into a BatchNorm2d absorbs it (eval-mode BN is
                      an affine map per channel); found by running the model once with hooks, so it works for
                      `nn.Sequential` pairs (TinyViT's Conv2d_BN) and attribute pairs (timm Xception) alike.
- `sdpa_attention`  : TinyViT's window attention (softmax(q k^T * scale + bias) v) runs as one fused
                      `scaled_dot_product_attention` call with the bias as the additive mask; timm attention
                      blocks are switched to their fused path.
- `channels_last`   : convolutional models run in NHWC, the layout oneDNN's convolutions are fastest in.
- `bf16`            : (precision "bf16" only) bfloat16 weights and activations, where the CPU multiplies bf16
                      natively (AVX-512 BF16 / AMX); elsewhere bf16 weights with autocast as before.
- `micro_batch`     : models whose activations are large (LiteMedSAM runs its first stage at 256x256x256 per
                      image) take the batch a few images at a time, so the working set stays in cache.

What ran is returned as a JSON-able `info` dict, which the extraction records in the store's provenance. On CUDA
nothing is changed (autocast and pinned memory are handled by the extraction). Figures: benchmarks/RESULTS.md
(`bench_extraction`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from cbmir.models.base import Encoder

FP32_MIN_COSINE = 0.99999  # a kept fp32 rewrite must reproduce the original output to rounding
BF16_MIN_COSINE = 0.99  # below this a bf16 model is refused and fp32 runs instead
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
LARGE_ACTIVATION_BYTES = 32 * 2**20  # micro-batch when one image's largest activation exceeds this (fp32)


def cpu_info() -> dict[str, Any]:
    """CPU model, core count and the ISA flags that matter for matrix multiplies (from /proc/cpuinfo)."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    present = [f for f in ISA_FLAGS if f in flags]
    return {
        "model": name,
        "cores": os.cpu_count(),
        "isa": present,
        "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "amx": "amx_bf16" in flags,
    }


# ----------------------------------------------------------------------------------------------- rewrites
def _fused_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """`conv` followed by eval-mode `bn` as one convolution with bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def fuse_conv_bn(module: nn.Module, example: torch.Tensor) -> int:
    """Fold each BatchNorm2d whose input is exactly a Conv2d's output into that Conv2d; returns the count."""
    names = {m: n for n, m in module.named_modules()}
    outputs: dict[int, nn.Conv2d] = {}
    pairs: dict[nn.BatchNorm2d, nn.Conv2d] = {}
    keep: list[torch.Tensor] = []  # hold the tensors so their ids stay unique during the pass

    def conv_hook(mod, _inp, out):
        outputs[id(out)] = mod
        keep.append(out)

    def bn_hook(mod, inp):
        conv = outputs.get(id(inp[0]))
        if conv is not None and not mod.training and mod.track_running_stats:
            pairs.setdefault(mod, conv)

    handles = [m.register_forward_hook(conv_hook) for m in module.modules() if type(m) is nn.Conv2d]
    handles += [m.register_forward_pre_hook(bn_hook) for m in module.modules() if type(m) is nn.BatchNorm2d]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    convs = [conv for conv in pairs.values()]
    for bn, conv in pairs.items():
        if convs.count(conv) > 1:  # a conv feeding two BNs is not a pair
            continue
        _set_submodule(module, names[conv], _fused_conv(conv, bn))
        _set_submodule(module, names[bn], nn.Identity())
    return sum(1 for conv in pairs.values() if convs.count(conv) == 1)


def _tinyvit_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """TinyViT `Attention.forward` (eval mode) with one fused attention call; same arithmetic."""
    b, n, _ = x.shape
    x = self.norm(x)
    q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    bias = self.ab.to(q.dtype).unsqueeze(0)  # 4-D: the shape CPU flash attention accepts as a mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    return self.proj(out.transpose(1, 2).reshape(b, n, self.dh))


def sdpa_attention(module: nn.Module) -> int:
    """Route attention blocks through `scaled_dot_product_attention`; returns how many were switched."""
    count = 0
    for mod in module.modules():
        if all(hasattr(mod, a) for a in ("ab", "attention_bias_idxs", "qkv", "key_dim", "dh")):
            mod.forward = types.MethodType(_tinyvit_attention_forward, mod)  # TinyViT (LiteMedSAM)
            count += 1
        elif hasattr(mod, "fused_attn") and isinstance(mod.fused_attn, bool):
            count += int(not mod.fused_attn)  # timm Attention: count only the ones switched on here
            mod.fused_attn = True
    return count


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.kernel_size != m.stride for m in module.modules())


def _largest_activation(module: nn.Module, example: torch.Tensor) -> int:
    """Bytes of the largest leaf-module output for `example` (one image)."""
    sizes = [0]

    def hook(_mod, _inp, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    return max(sizes)


class Prepared(nn.Module):
    """The optimised module behind the `Encoder.module` interface: float32 NCHW in, float32 `[B, D]` out."""

    def __init__(
        self, module: nn.Module, dtype: torch.dtype, channels_last: bool, micro_batch: int, autocast: bool
    ) -> None:
        super().__init__()
        self.module, self.dtype, self.channels_last = module, dtype, channels_last
        self.micro_batch, self.autocast = micro_batch, autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        step = self.micro_batch or len(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            parts = [self.module(x[i : i + step]) for i in range(0, len(x), step)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).float()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1).min())


def optimise_for_inference(
    encoder: Encoder, device: str = "cpu", precision: str = "fp32", example: torch.Tensor | None = None
) -> tuple[Encoder, dict[str, Any]]:
    """A copy of `encoder` whose module runs fast on `device` at `precision` ("fp32" or "bf16"), and what ran.

    The returned module takes the float32 batches `encoder.transform` makes and returns float32 `[B, dim]`.
    `example` is one preprocessed image `[1, C, H, W]` used to find conv/BN pairs and to check each rewrite
    (default: random values of the transform's shape).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    info: dict[str, Any] = {"device": device, "precision": precision, "threads": torch.get_num_threads()}
    if not device.startswith("cpu"):
        info["steps"] = ["none (CUDA: autocast and pinned memory in the extraction)"]
        return encoder, info
    cpu = cpu_info()
    info["cpu"], info["isa"] = cpu["model"], cpu["isa"]
    if example is None:
        from PIL import Image

        shape = tuple(encoder.transform(Image.new("RGB", (64, 64))).shape)
        example = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    module = copy.deepcopy(encoder.module).eval()
    with torch.no_grad():
        reference = module(example)
    steps: list[str] = []

    def attempt(name: str, rewrite) -> None:
        nonlocal module
        candidate = copy.deepcopy(module)
        detail = rewrite(candidate)
        if detail == 0:
            return
        with torch.no_grad():
            cos = _cosine(candidate(example), reference)
        if cos >= FP32_MIN_COSINE:
            module = candidate
            steps.append(f"{name} ({detail})" if detail is not True else name)
        else:
            info.setdefault("rejected", []).append(f"{name} (min cosine {cos:.6f})")

    attempt("fuse_conv_bn", lambda m: fuse_conv_bn(m, example))
    attempt("sdpa_attention", sdpa_attention)
    channels_last = _has_conv(module)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        steps.append("channels_last")
    big = _largest_activation(module, example) > LARGE_ACTIVATION_BYTES
    micro_batch = 1 if big else 0
    if micro_batch:
        steps.append(f"micro_batch {micro_batch}")
    dtype, autocast = torch.float32, False
    if precision == "bf16":
        dtype = torch.bfloat16
        try:
            prepared = Prepared(copy.deepcopy(module).to(dtype), dtype, channels_last, micro_batch, False)
            with torch.no_grad():
                cos = _cosine(prepared(example), reference)
            module = prepared.module
            steps.append("bf16 weights" + (" (native bf16 matmul)" if cpu["native_bf16"] else ""))
        except RuntimeError as err:  # a module that rejects bf16 weights: fp32 weights under autocast
            dtype, autocast = torch.float32, True
            prepared = Prepared(module, dtype, channels_last, micro_batch, True)
            with torch.no_grad():
                cos = _cosine(prepared(example), reference)
            steps.append(f"bf16 autocast (bf16 weights failed: {type(err).__name__})")
            warnings.warn(
                f"{encoder.spec}: bf16 weights failed ({err}); using fp32 weights with bf16 autocast",
                stacklevel=2,
            )
        info["bf16_cosine_random_input"] = round(cos, 6)
        if cos < BF16_MIN_COSINE:
            raise RuntimeError(
                f"{encoder.spec}: bf16 output differs from fp32 (cosine {cos:.4f} < {BF16_MIN_COSINE}); use fp32"
            )
    info["steps"] = steps
    prepared = Prepared(module, dtype, channels_last, micro_batch, autocast).eval()
    return dataclasses.replace(encoder, module=prepared), info
