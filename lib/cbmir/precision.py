"""The encoder at the requested precision: device, bf16, and L2-normalised float32 output rows.

Extraction into a store and query-by-example both embed through `PrecisionRunner`, so a query is embedded
exactly as the index it searches.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from cbmir.errors import CbmirError
from cbmir.store import StoreError

if TYPE_CHECKING:
    import torch

    from cbmir.models.base import Encoder


class EncoderOutputError(StoreError):
    """The encoder returned a batch of the wrong shape (nothing is stored from it)."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` says the device ran out of memory (CUDA `torch.OutOfMemoryError`, a CPU allocation failure)."""
    import torch

    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


PRECISIONS = ("fp32", "bf16", "fp16", "auto")
MAX_DEFAULT_WORKERS = 16


class PrecisionError(CbmirError, ValueError):
    """An unknown precision, or one the device cannot run (the message names the parameter)."""


def resolve_precision(precision: str | None, bf16: bool, device: str) -> str:
    """The precision that will run: `precision` (else "bf16" if `bf16`, else "fp32"), with bf16 turned into fp16
    on a GPU without native bf16 (pre-Ampere: emulated and slow). fp16 runs on CUDA only. "auto" is bf16 where
    the device multiplies bf16 natively (a GPU with bf16, a CPU with AVX-512 BF16 or AMX), else fp32."""
    import torch

    wanted = precision or ("bf16" if bf16 else "fp32")
    if wanted not in PRECISIONS:
        raise PrecisionError(f"parameter 'precision' is {wanted!r}; allowed {list(PRECISIONS)}")
    on_cuda = device.startswith("cuda")
    if wanted == "auto":
        if on_cuda:
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
        from cbmir.accelerate import cpu_info

        return "bf16" if cpu_info()["native_bf16"] else "fp32"
    if wanted == "fp16" and not on_cuda:
        raise PrecisionError(f"parameter 'precision' is 'fp16', which runs on CUDA only (device {device!r})")
    if wanted == "bf16" and on_cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        warnings.warn("this GPU has no native bf16: using fp16 autocast", stacklevel=2)
        return "fp16"
    return wanted


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers for this machine: one per usable core but one (for the main process), at most 16.

    With 0 workers a batch is decoded inline, on `decode_threads` threads between forward passes. On 2 CPU cores
    neither won throughout (`benchmarks/bench_extraction.py`, RESULTS.md 2026-12-01): in the steady rate inline
    was ahead for 4 of 8 encoder/precision pairs and behind for 4, among them bf16 LiteMedSAM, which dominates
    the default report's extraction; so the default stays one worker per core but one.
    """
    return max(0, min(MAX_DEFAULT_WORKERS, usable_cores() - 1))


def decode_threads() -> int:
    """Threads that decode a batch inline (no DataLoader workers): one per usable core, at most 16."""
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cores()))


HOST_MEMORY_SHARE = 8  # batches in flight may hold at most 1/8 of the host's memory


def host_memory_bytes() -> int:
    """Physical memory of this machine (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def loader_settings(num_workers: int, batch_bytes: int, pin: bool, host_bytes: int) -> dict[str, Any]:
    """DataLoader `prefetch_factor` and `pin_memory` that keep the batches in flight within the host's share.

    Each worker prefetches up to 2 batches; fewer when that would exceed `host_bytes / HOST_MEMORY_SHARE`, and
    pinning (page-locked memory) is dropped when even one batch per worker would.
    """
    budget = host_bytes // HOST_MEMORY_SHARE if host_bytes else None
    workers = max(1, num_workers)
    prefetch = 2
    if budget is not None and batch_bytes > 0:
        prefetch = max(1, min(2, budget // (workers * batch_bytes)))
        pin = pin and workers * batch_bytes * prefetch <= budget
    settings: dict[str, Any] = {"pin_memory": pin}
    if num_workers > 0:
        settings["prefetch_factor"] = int(prefetch)
    return settings


def resolve_device(device: str | None) -> str:
    """`device`, or "cuda" when available, else "cpu"."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class PrecisionRunner:
    """Embed one batch at a time into L2-normalised float32 rows, at the requested precision.

    `precision` (`resolve_precision`: fp32, bf16 or fp16; the older `bf16` flag asks for bf16) means autocast on
    CUDA at that dtype; fp32 on CUDA allows TF32 matrix products (`tf32`). On the CPU the module is prepared by `cbmir.accelerate.optimise_for_inference`
    (each rewrite kept only if its output matches the original; bf16 weights + autocast where bf16 is asked for);
    if a module then rejects bf16 weights, it falls back to fp32 weights + autocast. The caller's module is never
    changed: rewrites live in a copy. `precision` and `speed` record what ran. `compile`, `n_images` and
    `batch_size` go to `optimise_for_inference` (torch.compile when the run is long enough to pay for it).
    """

    def __init__(
        self,
        encoder: Encoder,
        device: str,
        bf16: bool,
        precision: str | None = None,
        *,
        compile: str = "auto",
        n_images: int | None = None,
        batch_size: int = 1,
    ) -> None:
        import torch

        self.dtype_name = resolve_precision(precision, bf16, device)
        bf16 = self.dtype_name != "fp32"  # autocast on
        self.amp_dtype = torch.float16 if self.dtype_name == "fp16" else torch.bfloat16
        self.encoder, self.device, self.bf16 = encoder, device, bf16
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.tf32 = self.device_type == "cuda" and not bf16
        if self.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True  # process-wide, as torch offers it
            torch.backends.cudnn.allow_tf32 = True
        self.module, self.dtype = encoder.module.to(device).eval(), torch.float32
        self.precision = "autocast" if bf16 else "fp32"
        self.speed: dict[str, Any] = {}
        self.max_batch: int | None = None  # lowered by `embed` after an out-of-memory error
        self.batch_sizes_run: Counter[int] = Counter()  # forward batch size -> how many batches ran at it
        self.oom_retries = 0
        if (
            self.device_type == "cpu"
        ):  # CPU rewrites (conv+BN fusion, SDPA, NHWC, bf16 weights) in a checked copy
            from cbmir.accelerate import optimise_for_inference

            fast, self.speed = optimise_for_inference(
                encoder,
                device,
                "bf16" if bf16 else "fp32",
                compile=compile,
                n_images=n_images,
                batch_size=batch_size,
            )
            self.module = fast.module
            if bf16 and self.speed.get("precision") == "fp32":  # nothing to run in bf16: record what ran
                self.dtype_name, self.bf16, self.precision = "fp32", False, "fp32"
            if bf16 and any(step.startswith("bf16 weights") for step in self.speed["steps"]):
                self.precision = "weights+autocast"

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        with (
            torch.inference_mode(),
            torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.bf16),
        ):
            return self.module(batch.to(device=self.device, dtype=self.dtype, non_blocking=True)).float()

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """`[B, D]` float32 rows of unit length (non-finite outputs are passed through for the caller to flag)."""
        import torch

        try:
            out = self._forward(batch)
        except RuntimeError as err:
            if self.precision != "weights+autocast" or is_out_of_memory(err):
                raise
            warnings.warn(
                f"{self.encoder.spec}: bf16 weights failed ({err}); using fp32 weights with bf16 autocast",
                stacklevel=2,
            )
            self.module, self.dtype, self.precision = self.encoder.module.eval(), torch.float32, "autocast"
            out = self._forward(batch)
        if out.ndim != 2 or out.shape != (batch.shape[0], self.encoder.dim):
            raise EncoderOutputError(
                f"encoder {self.encoder.spec!r} returned shape {tuple(out.shape)} for a batch of "
                f"{batch.shape[0]}; expected [B, {self.encoder.dim}] (Encoder.dim)"
            )
        return torch.nn.functional.normalize(out, dim=1).cpu().numpy().astype(np.float32, copy=False)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """Like calling the runner, but an out-of-memory error halves the batch and retries (down to 1).

        Rows come back in order, each exactly once; the lowered size is kept for later batches and every size
        that ran is counted in `batch_sizes_run` (extraction records it in the store's provenance).
        """
        out: list[np.ndarray] = []
        start, n = 0, batch.shape[0]
        while start < n:
            size = min(n - start, self.max_batch or n)
            try:
                out.append(self(batch[start : start + size]))
            except (RuntimeError, MemoryError) as err:
                if not is_out_of_memory(err) or size == 1:
                    raise
                self.max_batch = size // 2
                self.oom_retries += 1
                _release_cached_memory(self.device_type)
                warnings.warn(
                    f"{self.encoder.spec}: out of memory at batch size {size}; retrying at {self.max_batch}",
                    stacklevel=2,
                )
                continue
            self.batch_sizes_run[size] += 1
            start += size
        return np.concatenate(out) if len(out) > 1 else out[0]

    def batch_record(self, requested: int) -> dict[str, Any]:
        """The batch sizes of this run, for provenance: requested, the sizes that ran (and how often), retries."""
        return {
            "requested": int(requested),
            "ran": {str(k): v for k, v in sorted(self.batch_sizes_run.items(), reverse=True)},
            "out_of_memory_retries": self.oom_retries,
        }


def _release_cached_memory(device_type: str) -> None:
    import torch

    if device_type == "cuda":
        torch.cuda.empty_cache()
