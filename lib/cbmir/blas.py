"""FAISS's matrix products on CPUs its bundled OpenBLAS does not recognise.

The faiss-cpu wheel (1.15) bundles OpenBLAS 0.3.15, which picks its kernels from the CPU's model number. On a CPU
newer than that release (e.g. a virtualised Sapphire Rapids Xeon) it falls back to its oldest x86-64 kernels
("Prescott", SSE3 only), and every FAISS product that runs through BLAS (exact search, IVF training and assignment,
exact re-ranking) runs several times slower than the CPU allows (`benchmarks/bench_blas_core.py`).

OpenBLAS reads the environment variable `OPENBLAS_CORETYPE` when it is loaded. `prefer_fast_kernels`, called when
cbmir is imported, sets it from the CPU's instruction sets (AVX-512 F/BW/DQ/VL -> "SkylakeX", AVX2 + FMA ->
"Haswell") unless it is already set, so that a value of your own always wins. It must run before FAISS is first
imported; numpy's and torch's own BLAS libraries, loaded earlier, are not affected.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

CORETYPE_VARIABLE = "OPENBLAS_CORETYPE"
SKYLAKEX_FLAGS = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})
HASWELL_FLAGS = frozenset({"avx2", "fma"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def coretype_for(flags: set[str]) -> str | None:
    """The OpenBLAS core type whose kernels `flags` can run: "SkylakeX", "Haswell", or None (leave the choice)."""
    if SKYLAKEX_FLAGS <= flags:
        return "SkylakeX"
    if HASWELL_FLAGS <= flags:
        return "Haswell"
    return None


def prefer_fast_kernels(flags: set[str] | None = None) -> str | None:
    """Set `OPENBLAS_CORETYPE` for FAISS's OpenBLAS unless it is set or FAISS is already loaded.

    Returns the value now in effect (None: OpenBLAS detects the CPU itself). Only x86-64 Linux is touched.
    """
    if CORETYPE_VARIABLE in os.environ or "faiss" in sys.modules:
        return os.environ.get(CORETYPE_VARIABLE)
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        return None
    choice = coretype_for(cpu_flags() if flags is None else flags)
    if choice is not None:
        os.environ[CORETYPE_VARIABLE] = choice
    return choice


def faiss_blas_core() -> str | None:
    """The kernel set FAISS's bundled OpenBLAS is using (e.g. "SkylakeX", "Prescott"); None if not found."""
    import faiss

    folder = Path(faiss.__file__).resolve().parent.parent / "faiss_cpu.libs"
    for lib in sorted(folder.glob("libopenblas*.so*")):
        try:
            handle = ctypes.CDLL(str(lib))
            handle.openblas_get_corename.restype = ctypes.c_char_p
            return handle.openblas_get_corename().decode()
        except (OSError, AttributeError):
            continue
    return None
