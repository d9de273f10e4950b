"""The SSD plugin's GPU kernel: our Triton SSD forward (`ssd_triton`), wrapped for TensorRT's calling convention.

TensorRT launches an AOT plugin kernel with the input pointers, then the extra int32 scalars,
then the output pointers, all tensors dense (row-major, ``LINEAR``). The wrapper takes exactly
that and calls `ssd_triton`'s forward kernel, inlined, with strides computed from the shapes,
so there is one SSD forward to keep correct:

- inputs x, dt, A, B, C, D, state; scalars length, nheads, ngroups, headdim, d_state; outputs
  y, new_state. Grid (H, cdiv(P, BLOCK_P), batch).

`launch_ssd` runs it from torch tensors (the plugin's Python ``impl``, and the CPU tests under
``TRITON_INTERPRET=1``); `compile_ssd` gives PTX for ``tensorrt.plugin.aot_impl``. The launch
geometry is generic over the dim type (ints, or TensorRT shape expressions in `ssd_trt`).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from . import ssd_triton, trt_kernels
from .trt_kernels import TRITON_TYPES, CompiledKernel, _compile, cdiv

# Bound by `_kernels()` on first use (see `scan_triton`'s docstring: why not at import).
triton = None
tl = None
_ssd_body = None

WARPS = ssd_triton.NUM_WARPS
CHUNK = ssd_triton.MAX_CHUNK  # inference only: no per-chunk states, the forward's chunk
DOT = {"FP32": "ieee", "FP16": "tf32", "BF16": "tf32"}  # see `ssd_triton.dot_precision`


def _ssd_aot_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr,
    length, nheads, ngroups, headdim, d_state,
    y_ptr, h_last_ptr,
    DOT: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Dense x, y (batch, L, H, P), dt (batch, L, H), B, C (batch, L, G, N), state (batch, H, P, N)
    -> the project's SSD forward kernel."""
    s_xl = tl.cast(nheads, tl.int64) * headdim  # int64 so that batch strides cannot overflow
    s_Bl = tl.cast(ngroups, tl.int64) * d_state
    _ssd_body(
        x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, y_ptr, h_last_ptr, h_last_ptr,  # no states stored
        length, nheads, nheads // ngroups, headdim, d_state,
        s_xl * length, s_xl, headdim, 1, tl.cast(nheads, tl.int64) * length, nheads, 1,
        s_Bl * length, s_Bl, d_state, 1, s_Bl * length, s_Bl, d_state, 1,
        s_xl * length, s_xl, headdim, 1,
        HAS_D=True, HAS_H0=True, STORE_CKPT=False, DOT=DOT, BLOCK_Q=BLOCK_Q, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N,
    )


@functools.cache
def _kernels() -> SimpleNamespace:
    """Import Triton, bind the project's kernel body and wrap it (first call only)."""
    global triton, tl, _ssd_body
    import triton
    import triton.language as tl

    _ssd_body = ssd_triton._kernels().fwd
    trt_kernels._kernels()  # binds Triton in the module of `_compile`, shared with Mamba-1's plugins
    return SimpleNamespace(ssd=triton.jit(_ssd_aot_kernel))


def ssd_scalars(x_shape, B_shape) -> tuple:
    """The int32 arguments: length, nheads, ngroups, headdim, d_state."""
    return x_shape[1], x_shape[2], B_shape[2], x_shape[3], B_shape[3]


def ssd_grid(x_shape, headdim: int, ceil_div=cdiv) -> tuple:
    """(H, cdiv(P, BLOCK_P), batch); `headdim` as an int (it sets BLOCK_P)."""
    return x_shape[2], ceil_div(x_shape[3], ssd_triton.fwd_block_p(headdim)), x_shape[0]


def ssd_constexprs(act: str, headdim: int, d_state: int) -> dict:
    return {"DOT": DOT[act], "BLOCK_Q": CHUNK, "BLOCK_P": ssd_triton.fwd_block_p(headdim),
            "BLOCK_N": ssd_triton._block(d_state)}


def ssd_signature(act: str) -> dict[str, str]:
    """Triton signature of the wrapper for activation type `act` (FP32, FP16, BF16)."""
    t, f = "*" + TRITON_TYPES[act], "*fp32"
    pointers = dict(zip(("x_ptr", "dt_ptr", "A_ptr", "B_ptr", "C_ptr", "D_ptr", "h0_ptr"), (t, f, f, t, t, f, f)))
    scalars = dict.fromkeys(("length", "nheads", "ngroups", "headdim", "d_state"), "i32")
    return {**pointers, **scalars, "y_ptr": t, "h_last_ptr": f,
            **dict.fromkeys(("DOT", "BLOCK_Q", "BLOCK_P", "BLOCK_N"), "constexpr")}


_ACT = {torch.float32: "FP32", torch.float16: "FP16", torch.bfloat16: "BF16"}


def launch_ssd(x, dt, A, B, C, D, state, y, new_state) -> None:
    """Run the wrapper on dense tensors (shapes in `ssd_trt_shapes.SSD`), writing y and new_state."""
    if not all(t.is_contiguous() for t in (x, dt, A, B, C, D, state, y, new_state)):
        raise ValueError("the plugin kernels take dense (contiguous) tensors")
    ssd_triton.check_shapes(x, dt, A, B, C, D, state)
    if x.numel() == 0:
        new_state.copy_(state)
        return
    headdim, d_state = x.shape[3], B.shape[3]
    _kernels().ssd[ssd_grid(x.shape, headdim)](
        x, dt, A, B, C, D, state, *ssd_scalars(x.shape, B.shape), y, new_state,
        **ssd_constexprs(_ACT[x.dtype], headdim, d_state), num_warps=WARPS)


def compile_ssd(act: str, *, headdim: int, d_state: int, target=None) -> CompiledKernel:
    """PTX of the wrapper for activation type `act`. `target`: a ``triton.backends.compiler.GPUTarget``
    (None: the current GPU)."""
    return _compile(_kernels().ssd, ssd_signature(act), ssd_constexprs(act, headdim, d_state), WARPS, target)
