"""cbmir.blas: FAISS's bundled OpenBLAS gets kernels the CPU can run, and a user's own choice always wins."""

import os
import subprocess
import sys

import pytest
from cbmir import blas


def test_coretype_follows_the_instruction_sets():
    assert (
        blas.coretype_for({"sse3", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"})
        == "SkylakeX"
    )
    assert (
        blas.coretype_for({"avx2", "fma", "avx512f"}) == "Haswell"
    )  # AVX-512 without BW/DQ/VL: not SkylakeX
    assert blas.coretype_for({"sse3", "avx"}) is None


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t: fpu\n"
    )
    assert blas.cpu_flags(info) == {"fpu", "avx2", "fma"}
    assert blas.cpu_flags(tmp_path / "absent") == set()


def test_a_set_value_or_a_loaded_faiss_is_left_alone(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert blas.prefer_fast_kernels({"avx512f", "avx512bw", "avx512dq", "avx512vl"}) == "Haswell"
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.setitem(sys.modules, "faiss", object())  # already loaded: too late to choose
    assert blas.prefer_fast_kernels({"avx2", "fma"}) is None
    assert "OPENBLAS_CORETYPE" not in os.environ


def _core_in_fresh_process(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if env_value is not None:
        env["OPENBLAS_CORETYPE"] = env_value
    code = "import cbmir, faiss; from cbmir.blas import faiss_blas_core; print(faiss_blas_core())"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.skipif(
    blas.coretype_for(blas.cpu_flags()) is None, reason="a CPU without AVX2: OpenBLAS chooses"
)
def test_importing_cbmir_gives_faiss_the_kernels_of_this_cpu():
    assert _core_in_fresh_process(None) == blas.coretype_for(blas.cpu_flags())
    assert _core_in_fresh_process("Haswell") == "Haswell"  # the user's value wins
