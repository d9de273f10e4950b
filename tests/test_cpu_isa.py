"""The CPU kernels' AVX2 build on a CPU with AVX512.

vec_math.h's vector width (LANES: 16 with AVX512F, else 8) and gemv_cpu.c's products have a
path per instruction set, and a machine builds only its own; on an AVX512 machine this runs
the whole-step tests, the products' and the attention's again against the AVX2 build
($HYBRID_MLLM_CFLAGS=-mno-avx512f, in a cache of its own). On an AVX2 machine the suite's
own build is that one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_mllm.plugins.mixers import scan_cpu

TESTS = Path(__file__).parent


@pytest.mark.skipif(not {"avx512f", "avx2", "fma"} <= scan_cpu.cpu_flags(),
                    reason="needs AVX512F (else the AVX2 build is this suite's own)")
def test_the_avx2_build_passes_the_decode_step_tests(tmp_path):
    env = {**os.environ, scan_cpu.CFLAGS_ENV: "-mno-avx512f", scan_cpu.CACHE_ENV: str(tmp_path)}
    which = subprocess.run(
        [sys.executable, "-c", ("from hybrid_mllm.plugins.mixers import gemv_cpu, scan_cpu; "
                                "print(gemv_cpu._load_library().gemv_f32_vectorized(), scan_cpu._lib().scan_lanes())")],
        env=env, capture_output=True, text=True, timeout=600, check=True)
    assert which.stdout.split() == ["2", "8"]  # AVX2 products, 8-float vectors
    tests = [str(TESTS / "test_model_step.py"),  # whole steps: products, Mamba, attention, MoE, the pool
             str(TESTS / "test_decode_step.py::test_few_row_linear_kernel_matches_float64_matmul"),
             str(TESTS / "test_block_step.py::test_attention_step_over_a_longer_cache_matches_unfused")]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                            env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
