"""float32 and bfloat16 linear layers for a few rows on the CPU: `gemv_cpu.c`, compiled on first use.

A decode step multiplies one row per sequence by each weight matrix. PyTorch's CPU bfloat16
matmul reads such a weight at about half the rate of its float32 one, and its float32 one
runs every product, however small, on OpenMP's threads: with 2 threads each of a small
model's ~60 products per step waits for the second thread to wake (``OMP_WAIT_POLICY=PASSIVE``)
or for a core (spinning waits on a loaded machine). These kernels (AVX512-BF16 dot products
or AVX512F FMAs, else AVX2 FMAs; float32 accumulation) read a small weight on the calling
thread and split a large one's columns over Python threads; they serve `hybrid_mllm.core.decode.linear` through
the ``register_linear_kernels`` hook (RESULTS.md, "CPU decode"). Built with
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
MAX_ROWS = 4  # from 8 rows on, oneDNN's blocked matmuls are faster (benchmarks/bench_linear.py)
THREADED_BYTES = 4 << 20  # bytes of W from which its columns are split over threads
# dtype -> (the C function, its "was it vectorized" query, the instructions it needs)
KERNELS = {torch.bfloat16: ("gemv_bf16", "gemv_bf16_vectorized", "AVX512-BF16 or AVX2 with FMA"),
           torch.float32: ("gemv_f32", "gemv_f32_vectorized", "AVX512F or AVX2 with FMA")}

_load_lock = threading.Lock()


@functools.cache
def _load_library() -> ctypes.CDLL | str:
    try:
        lib = ctypes.CDLL(str(build_library(find_compiler(), cache_dir(), SOURCE)))
    except (BuildError, OSError) as exc:
        return f"the CPU linear kernels could not be built ({_first_line(str(exc))})"
    for name, _, _ in KERNELS.values():
        getattr(lib, name).argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5
        getattr(lib, name).restype = None
    return lib


@functools.cache
def available(dtype: torch.dtype = torch.bfloat16) -> str | None:
    """None when the `dtype` kernel is built and vectorized, else why not."""
    if dtype not in KERNELS:
        return f"no CPU linear kernel for {dtype} (only {', '.join(map(str, KERNELS))})"
    with _load_lock:
        lib = _load_library()
    if isinstance(lib, str):
        return lib
    _, vectorized, isa = KERNELS[dtype]
    if not getattr(lib, vectorized)():
        return f"this CPU or compiler has no {isa}: PyTorch's own matmul is faster than the scalar loop"
    return None


def accepts(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """float32 or bfloat16 CPU tensors of one dtype, W contiguous, at most `MAX_ROWS` rows of
    x, the kernel built. Large weights too: read in order, split over threads, they come
    1.1-1.9x faster than PyTorch's GEMV at one row (float32, benchmarks/bench_linear.py)."""
    return (x.dtype in KERNELS and weight.dtype == x.dtype and x.device.type == "cpu"
            and weight.is_contiguous() and x.numel() // max(x.shape[-1], 1) <= MAX_ROWS
            and (bias is None or bias.dtype == x.dtype) and available(x.dtype) is None)


def linear_few_rows(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear` for float32 or bfloat16: x (..., K), weight (N, K), bias (N,) -> (..., N)."""
    n, k = weight.shape
    x = x if x.is_contiguous() else x.contiguous()
    y = torch.empty(*x.shape[:-1], n, dtype=x.dtype)
    b = None if bias is None else bias.contiguous()
    args = (x.data_ptr(), weight.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(), x.numel() // k, n, k)
    fn = getattr(_load_library(), KERNELS[x.dtype][0])
    if weight.numel() * weight.element_size() < THREADED_BYTES or torch.get_num_threads() == 1:
        fn(*args, 0, n)
    else:  # column ranges in multiples of 8, the kernels' block of W rows
        _run([(fn, *args, 8 * lo, min(n, 8 * hi)) for lo, hi in _split(0, -(-n // 8), torch.get_num_threads())])
    return y


CPU_FEW_ROWS = LinearKernel(
    fn=linear_few_rows, accepts=accepts,
    description=(f"AVX512 or AVX2 float32 / bfloat16 dot products for up to {MAX_ROWS} rows (decoding), "
                 "float32 accumulation"))
