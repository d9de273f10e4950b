"""bfloat16 linear layers for a few rows on the CPU: `gemv_cpu.c`, compiled on first use.

A decode step multiplies one row per sequence by each weight matrix. PyTorch's CPU bfloat16
matmul reads such a weight at about half the rate of its float32 one (RESULTS.md, "CPU
decode"), so the bfloat16 model decoded no faster than float32 though it reads half the
bytes. This kernel (AVX512-BF16 dot products, float32 accumulation) serves
`hybrid_mllm.core.decode.linear` through the ``register_linear_kernels`` hook; built with
`step_cpu.build_library`, i.e. `scan_cpu`'s compiler discovery, flags and cache.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path

import torch
from torch import Tensor

from hybrid_mllm.core.decode import LinearKernel

from .scan_cpu import BuildError, _first_line, _run, _split, cache_dir, find_compiler
from .step_cpu import build_library

SOURCE = Path(__file__).with_name("gemv_cpu.c")
MAX_ROWS = 4  # from 8 rows on, oneDNN's blocked bf16 matmul is faster (RESULTS.md, "CPU decode")
THREADED_WEIGHTS = 1 << 20  # elements of W from which the columns are split over threads

_load_lock = threading.Lock()


@functools.cache
def _load_library() -> ctypes.CDLL | str:
    try:
        lib = ctypes.CDLL(str(build_library(find_compiler(), cache_dir(), SOURCE)))
    except (BuildError, OSError) as exc:
        return f"the bfloat16 CPU linear kernel could not be built ({_first_line(str(exc))})"
    if not lib.gemv_bf16_vectorized():
        return "this CPU or compiler has no AVX512-BF16: PyTorch's own matmul is faster than the scalar loop"
    lib.gemv_bf16.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5
    lib.gemv_bf16.restype = None
    return lib


def available() -> str | None:
    with _load_lock:
        lib = _load_library()
    return lib if isinstance(lib, str) else None


def accepts(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """bfloat16 CPU tensors, W contiguous, at most `MAX_ROWS` rows of x, the kernel built."""
    return (x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.device.type == "cpu"
            and weight.is_contiguous() and x.numel() // max(x.shape[-1], 1) <= MAX_ROWS
            and (bias is None or bias.dtype == torch.bfloat16) and available() is None)


def linear_bf16(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear` for bfloat16: x (..., K), weight (N, K), bias (N,) -> (..., N)."""
    n, k = weight.shape
    rows = x.reshape(-1, k).contiguous()
    y = torch.empty(rows.shape[0], n, dtype=torch.bfloat16)
    b = None if bias is None else bias.contiguous()
    args = (rows.data_ptr(), weight.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(),
            rows.shape[0], n, k)
    lib = _load_library()
    threads = torch.get_num_threads()
    if threads == 1 or weight.numel() < THREADED_WEIGHTS:
        lib.gemv_bf16(*args, 0, n)
    else:  # column ranges in multiples of 4, the kernel's block of W rows
        _run([(lib.gemv_bf16, *args, 4 * lo, min(n, 4 * hi)) for lo, hi in _split(0, -(-n // 4), threads)])
    return y.view(*x.shape[:-1], n)


CPU_BF16 = LinearKernel(fn=linear_bf16, accepts=accepts,
                        description=f"AVX512-BF16 dot products for up to {MAX_ROWS} rows (decoding), float32 accumulation")
