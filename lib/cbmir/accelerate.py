"""Fast inference on CPU without changing what an encoder computes: one entry point, `optimise_for_inference`.

Each step rewrites a private copy of the encoder's module (the caller's module is never touched) and is kept only
if the output still matches the original on a random batch (cosine >= `FP32_MIN_COSINE` in fp32):

- `fuse_conv_bn`    : every Conv2d whose output goes straight into a BatchNorm2d absorbs it (eval-mode BN is
                      an affine map per channel); found by running the model once with hooks, so it works for
                      `nn.Sequential` pairs (TinyViT's Conv2d_BN) and attribute pairs (timm Xception) alike.
- `sdpa_attention`  : (fp32 only) TinyViT's window attention (softmax(q k^T * scale + bias) v) runs as one
                      fused `scaled_dot_product_attention` call with the bias as the additive mask; timm attention
                      blocks are switched to their fused path (in every precision). In bf16 TinyViT keeps its
                      own matmul-softmax-matmul (`TINYVIT_SDPA`).
- `channels_last`   : convolutional models run in NHWC, the layout oneDNN's convolutions are fastest in.
- `bf16`            : (precision "bf16" only) bfloat16 weights and activations, where the CPU multiplies bf16
                      natively (AVX-512 BF16 / AMX); elsewhere bf16 weights with autocast as before.
- `micro_batch`     : models whose activations are large (LiteMedSAM runs its first stage at 256x256x256 per
                      image) take the batch a few images at a time, so the working set stays in cache.
- `torch.compile`   : inductor with weight freezing (conv/linear + GELU fused into one oneDNN call, weights
                      pre-packed, elementwise chains fused). Compiling costs 10-50 s on 2 cores, so with
                      `compile="auto"` it runs only when the run needs `compile_min_tflop()` or more (FLOPs of
                      one image, counted, x the images to embed): 10 TFLOP in bf16, and in fp32 on CPUs with
                      AMX; 40 TFLOP in fp32 elsewhere, where compiling gained 0.99-1.10x. It is kept when its
                      output matches the original module's (`FP32_MIN_COSINE`; `BF16_MIN_COSINE` in bf16); its speed on one call of the
                      example is recorded but decides nothing, so neither the choice nor the vectors (bf16
                      rounding differs between compiled and eager code) depend on how busy the machine is. Batches are padded to one fixed size so a short last batch does not
                      compile again.

What ran is returned as a JSON-able `info` dict, which the extraction records in the store's provenance. On CUDA
nothing is changed (autocast and pinned memory are handled by the extraction). Figures: benchmarks/RESULTS.md
(`bench_extraction`).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import os
import platform
import shutil
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.blas import cpu_flags

if TYPE_CHECKING:
    from cbmir.models.base import Encoder

FP32_MIN_COSINE = 0.99999  # a kept fp32 rewrite must reproduce the original output to rounding
BF16_MIN_COSINE = 0.99  # below this a bf16 model is refused and fp32 runs instead
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
LARGE_ACTIVATION_BYTES = 32 * 2**20  # micro-batch when one image's largest activation exceeds this (fp32)
COMPILE_MODES = ("auto", "on", "off")
# "auto" compiles when the run needs at least this many TFLOP (counted FLOPs per image x images), by precision
# and CPU kind (benchmarks/RESULTS.md, bench_extraction, compiled against eager LiteMedSAM on one call):
# - bf16: 1.85-2.75x on a 2-core Xeon with AMX, 1.70x on a 2-core AMD EPYC (Zen 5, AVX-512 BF16), for 10-25 s of
#   compiling, which pays back within about 30-100 s of eager work: 10 TFLOP;
# - fp32 with AMX (the Xeon): 1.17-1.84x: 10 TFLOP;
# - fp32 without AMX: 1.01-1.09x on a 2-core AMD EPYC with AVX2 (23-58 s of compiling), 0.99x on the Zen 5 EPYC
#   (Xception 1.10x), which pays back only after about 15 minutes of eager work (40 s at 1.05x): 40 TFLOP.
# Three machine kinds measured. LiteMedSAM on RadMini (75 GFLOP x 253 images = 19 TFLOP) is compiled in bf16 and
# on the Xeon, not in fp32 on the EPYCs; DINOv2-S and Xception are compiled nowhere.
COMPILE_MIN_TFLOP = {"bf16": 10.0, "fp32_amx": 10.0, "fp32": 40.0}


# TinyViT (LiteMedSAM) window attention through the fused SDPA kernel, by precision (benchmarks/RESULTS.md,
# bench_window_attention): over its 7x7 windows in bf16 its own matmuls ran 1.22x faster compiled and 1.07x eager
# on the Zen 5 EPYC, and the same on the Xeon (4.90 against 4.93 img/s); in fp32 the fused kernel stayed ahead
# (own 0.95x compiled, 0.92x eager).
TINYVIT_SDPA = {"fp32": True, "bf16": False}


def cpu_info() -> dict[str, Any]:
    """CPU model, core count and the ISA flags that matter for matrix multiplies (from /proc/cpuinfo)."""
    name, flags = "unknown CPU", cpu_flags()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
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


def compile_min_tflop(bf16: bool) -> tuple[float, str]:
    """(TFLOP a run must need for `compile="auto"` to compile, the reason): `COMPILE_MIN_TFLOP` for the
    precision and, in fp32, for whether this CPU has AMX."""
    if bf16:
        return COMPILE_MIN_TFLOP["bf16"], (
            "bf16: compiling measured 1.7-2.8x on a Xeon with AMX and a Zen 5 EPYC"
        )
    if cpu_info()["amx"]:
        return COMPILE_MIN_TFLOP["fp32_amx"], "fp32 on a CPU with AMX: compiling measured 1.2-1.8x on a Xeon"
    return COMPILE_MIN_TFLOP["fp32"], (
        "fp32 on a CPU without AMX: compiling measured 0.99-1.10x on two AMD EPYC kinds, so it pays only on long runs"
    )


# ------------------------------------------------------------------------------------------ allocation
HEAP_THRESHOLD_BYTES = 2**30  # allocations below this come from the heap during extraction
GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # glibc's starting mmap and trim thresholds
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def large_tensors_on_heap() -> Iterator[str]:
    """Serve tensors up to `HEAP_THRESHOLD_BYTES` from glibc's heap and keep freed memory there, while inside.

    glibc hands out each allocation above its mmap threshold (128 KiB, rising to 32 MiB at most) as fresh pages
    and returns them on free, so a model whose layers write large outputs (LiteMedSAM: 64 MiB per layer output at
    its first stage in fp32, 32 MiB in bf16) page-faults and zero-fills every output of every batch: an
    elementwise op on such a tensor took 17 ms instead of 3. The heap reuses the same memory from batch to batch
    instead; the values computed are the same. On leaving, the thresholds go back to glibc's starting values and the free heap is returned to the
    system (`malloc_trim`). Yields what was done, for provenance ("" where the C library is not glibc).
    """
    libc = _glibc()
    if libc is None:
        yield ""
        return
    ok = libc.mallopt(_M_MMAP_THRESHOLD, HEAP_THRESHOLD_BYTES) and libc.mallopt(
        _M_TRIM_THRESHOLD, HEAP_THRESHOLD_BYTES
    )
    try:
        yield (
            f"tensors up to {HEAP_THRESHOLD_BYTES >> 20} MiB from the heap (glibc mallopt: mmap and trim thresholds)"
            if ok
            else ""
        )
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


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


def _is_tinyvit_attention(mod: nn.Module) -> bool:
    return all(hasattr(mod, a) for a in ("ab", "attention_bias_idxs", "qkv", "key_dim", "dh"))


def sdpa_attention(module: nn.Module, tinyvit: bool = True) -> int:
    """Route attention blocks through `scaled_dot_product_attention` (TinyViT's window attention only with
    `tinyvit`); returns how many were switched."""
    count = 0
    for mod in module.modules():
        if _is_tinyvit_attention(mod):
            if not tinyvit:
                continue
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
        self,
        module: nn.Module,
        dtype: torch.dtype,
        channels_last: bool,
        micro_batch: int,
        autocast: bool,
        fixed_batch: int = 0,
    ) -> None:
        super().__init__()
        self.module, self.dtype, self.channels_last = module, dtype, channels_last
        self.micro_batch, self.autocast, self.fixed_batch = micro_batch, autocast, fixed_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in steps of `micro_batch` (else whole); with `fixed_batch`, every step is padded to that size."""
        x = x.to(self.dtype)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        step = self.fixed_batch or self.micro_batch or len(x)
        parts = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            for i in range(0, len(x), step):
                part = x[i : i + step]
                short = step - len(part) if self.fixed_batch else 0
                if short:  # zero images fill the batch (each image's output depends on itself alone)
                    part = torch.cat([part, part.new_zeros((short, *part.shape[1:]))])
                parts.append(self.module(part)[: len(part) - short])
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).float()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1).min())


def optimise_for_inference(
    encoder: Encoder,
    device: str = "cpu",
    precision: str = "fp32",
    example: torch.Tensor | None = None,
    *,
    compile: str = "auto",
    n_images: int | None = None,
    batch_size: int = 1,
) -> tuple[Encoder, dict[str, Any]]:
    """A copy of `encoder` whose module runs fast on `device` at `precision` ("fp32" or "bf16"), and what ran.

    The returned module takes the float32 batches `encoder.transform` makes and returns float32 `[B, dim]`.
    `example` is one preprocessed image `[1, C, H, W]` used to find conv/BN pairs and to check each rewrite
    (default: random values of the transform's shape). `compile` ("auto", "on", "off") decides `torch.compile`;
    "auto" needs `n_images` (how many images the run will embed) and compiles for batches of `batch_size`.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if compile not in COMPILE_MODES:
        raise ValueError(f"parameter 'compile' is {compile!r}; allowed {list(COMPILE_MODES)}")
    info: dict[str, Any] = {"device": device, "precision": precision, "threads": torch.get_num_threads()}
    info["load_1min"] = round(_load(), 2)  # how busy the machine was: the timings below depend on it
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
    tinyvit_sdpa = TINYVIT_SDPA[precision]
    attempt("sdpa_attention", lambda m: sdpa_attention(m, tinyvit=tinyvit_sdpa))
    if not tinyvit_sdpa and any(_is_tinyvit_attention(m) for m in module.modules()):
        info["window_attention"] = (
            "TinyViT's own matmuls (bf16: the fused kernel measured slower on 7x7 windows)"
        )
    channels_last = _has_conv(module)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        steps.append("channels_last")
    big = _largest_activation(module, example) > LARGE_ACTIVATION_BYTES
    micro_batch = 1 if big else 0
    if micro_batch:
        steps.append(f"micro_batch {micro_batch}")
    dtype, autocast = torch.float32, False
    if precision == "bf16" and next(module.parameters(), None) is None:
        # no weights, no matrix multiply (e.g. raw pixels): bf16 would only round the input
        precision = "fp32"
        steps.append("fp32: no weights, so bf16 has nothing to speed up")
        info["precision"] = "fp32"
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
    prepared = Prepared(module, dtype, channels_last, micro_batch, autocast).eval()
    if compile != "off":
        min_cosine = FP32_MIN_COSINE if precision == "fp32" else BF16_MIN_COSINE
        prepared = _compiled(
            prepared, example, reference, min_cosine, compile, n_images, batch_size, steps, info
        )
    info["steps"] = steps
    return dataclasses.replace(encoder, module=prepared), info


class _Frozen(nn.Module):
    """A `torch.compile`d module whose (re)compilations run with inductor's weight freezing on.

    Freezing turns the weights into constants, so inductor can fold them, pre-pack them for oneDNN and fuse
    conv/linear with the pointwise op after it; `torch.compile(options={"freezing": True})` does not reach that
    pass, the global config does, so it is switched on around each call (compilation happens inside the call).
    """

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._inductor import config

        with config.patch(freezing=True):
            return self.compiled(x)


def compiler_available() -> bool:
    """Whether inductor's C++ compiler is on PATH (torch.compile on the CPU builds C++ kernels)."""
    from torch._inductor import config

    cxx = config.cpp.cxx[0] if isinstance(config.cpp.cxx, tuple) else config.cpp.cxx
    return bool(shutil.which(cxx or "g++") or shutil.which("g++") or shutil.which("c++"))


def _count_cpu_attention() -> None:
    """Teach `FlopCounterMode` the CPU's fused attention kernel: torch counts the CUDA SDPA kernels but not
    `aten._scaled_dot_product_flash_attention_for_cpu`, so a ViT's attention products (about a tenth of its FLOPs
    at 224 px) were left out. Registered once; the same formula as torch's for the CUDA kernels."""
    from torch.utils import flop_counter

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def gflop_per_image(module: nn.Module, example: torch.Tensor) -> float:
    """GFLOP of one forward pass of one image, counted by `torch.utils.flop_counter` (matmuls, convolutions,
    attention, including the CPU's fused attention kernel); the same count on every machine and at any load."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(example[:1])
    return counter.get_total_flops() / 1e9


def _sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    from torch.utils import flop_counter

    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def roofline(
    module: nn.Module, example: torch.Tensor, gemm_gflops: float, memory_gbs: float
) -> dict[str, float]:
    """Per image, the fastest `module` could run on a machine with this GEMM rate and memory bandwidth (roofline).

    Runs `module` (eager) on the batch `example` and, for each operation that carries FLOPs (matmuls, convolutions,
    attention: those `torch.utils.flop_counter` counts), takes the longer of its FLOPs at `gemm_gflops` and the
    bytes of its tensor inputs (weights included) and output at `memory_gbs`; every other operation is taken as
    free, as if fused into its neighbours. An encoder made of low-intensity layers (depthwise convolutions, large
    activations, small attention windows) is then bound by memory, not by the GEMM rate. It is an estimate, not a
    strict bound: an operation whose data stay in cache moves them faster than `memory_gbs` (main memory).
    Returns GFLOP per image, the estimate in seconds per image, its share of the GEMM rate, and the share of the
    estimate spent in memory-bound operations.
    """
    from torch.utils import flop_counter
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    _count_cpu_attention()
    totals = {"flops": 0.0, "seconds": 0.0, "memory_seconds": 0.0}

    def nbytes(tree) -> int:
        return sum(t.numel() * t.element_size() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor))

    class Bound(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            packet = func._overloadpacket
            count = flop_counter.flop_registry.get(packet)
            if packet is torch.ops.aten.scaled_dot_product_attention:  # whole: one fused kernel on the CPU
                count = _sdpa_flops
            elif count is None:
                # a composite op (e.g. linear): count the ops it is made of, as FlopCounterMode does
                with self:
                    out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
            out = func(*args, **kwargs)
            if count is not None:
                flops = float(count(*args, **kwargs, out_val=out))
                compute = flops / (gemm_gflops * 1e9)
                memory = (nbytes((args, kwargs)) + nbytes(out)) / (memory_gbs * 1e9)
                totals["flops"] += flops
                totals["seconds"] += max(compute, memory)
                totals["memory_seconds"] += memory if memory > compute else 0.0
            return out

    with torch.inference_mode(), Bound():
        module(example)
    flops, seconds = totals["flops"], totals["seconds"]
    return {
        "gflop": flops / len(example) / 1e9,
        "seconds": seconds / len(example),
        "share_of_gemm": flops / seconds / (gemm_gflops * 1e9) if seconds else float("nan"),
        "memory_bound_share": totals["memory_seconds"] / seconds if seconds else float("nan"),
    }


def _seconds(fn, x: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        fn(x)
        return time.perf_counter() - start


def _compiled(
    prepared: Prepared,
    example: torch.Tensor,
    reference: torch.Tensor,
    min_cosine: float,
    mode: str,
    n_images: int | None,
    batch_size: int,
    steps: list[str],
    info: dict[str, Any],
) -> Prepared:
    """`prepared` with its module under `torch.compile` when that pays (see module doc), else `prepared`."""
    step = prepared.micro_batch or max(1, batch_size)
    if mode == "auto":
        tflop = gflop_per_image(prepared, example) * (n_images or 0) / 1e3
        threshold, why = compile_min_tflop(prepared.dtype == torch.bfloat16 or prepared.autocast)
        info["run_tflop"] = round(tflop, 3)
        info["compile_min_tflop"] = threshold
        if tflop < threshold:
            info["compile"] = (
                f"not compiled: the run needs {tflop:.1f} TFLOP, under the fixed {threshold:.0f} TFLOP threshold "
                f"for this precision and CPU ({why}; not measured per run)"
            )
            return prepared
    if not compiler_available():
        info["compile"] = "not compiled: no C++ compiler on PATH"
        warnings.warn("torch.compile skipped: no C++ compiler (g++) on PATH", stacklevel=3)
        return prepared
    candidate = Prepared(
        _Frozen(torch.compile(prepared.module, dynamic=False)),
        prepared.dtype,
        prepared.channels_last,
        prepared.micro_batch,
        prepared.autocast,
        fixed_batch=step,
    )
    batch = example.expand(step, *example.shape[1:]).contiguous()
    _seconds(prepared, batch)  # warm-up at the batch size that will run
    eager = _seconds(prepared, batch) / step
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            out = candidate(example)
        compile_seconds = time.perf_counter() - start
        _seconds(candidate, batch)  # the first calls after compiling still create oneDNN primitives
        compiled = _seconds(candidate, batch) / step
    except Exception as err:  # noqa: BLE001 - any compiler failure leaves the eager module running
        info["compile"] = f"not compiled: torch.compile failed ({type(err).__name__}: {str(err)[:200]})"
        warnings.warn(f"torch.compile failed, running eagerly: {err}", stacklevel=3)
        return prepared
    cos = _cosine(out, reference)
    info["compile_min_cosine_to_original"] = round(cos, 6)
    info["compile_seconds"] = round(compile_seconds, 2)
    info["seconds_per_image"] = {"eager": round(eager, 4), "compiled": round(compiled, 4)}
    if cos < min_cosine:
        info["compile"] = f"not kept: compiled output differs (min cosine {cos:.6f})"
        return prepared
    # kept whatever the timings say: a timing depends on the machine's load, and compiled and eager bf16 vectors
    # differ by rounding, so a timing-based choice would let the load change the report's numbers
    info["compile"] = "compiled"
    if compiled >= eager:
        info["compile"] += (
            f" (slower on the example: {compiled:.3f} >= {eager:.3f} s/image, 1-min load {_load():.1f}; "
            "kept, as the choice is made by counted FLOPs alone)"
        )
    steps.append(
        f"torch.compile (inductor, freezing; {compile_seconds:.0f} s; {eager / compiled:.2f}x on one call of the example)"
    )
    return candidate


def _load() -> float:
    """The 1-minute load average (nan where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")
