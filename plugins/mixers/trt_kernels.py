"""The plugins' GPU kernels: our Triton scan and conv, wrapped for TensorRT's calling convention.

TensorRT launches an AOT plugin kernel with its arguments in one order: the input pointers,
then the extra int32 scalars (`trtp.SymIntExprs`), then the output pointers, and tensors
are dense (row-major) in the ``LINEAR`` format. The wrappers below take exactly that and
call the project's kernels (`scan_triton`, `conv_triton`), inlined, with
strides computed from the shapes, so there is one scan and one conv to keep correct:

- ``scan``: inputs u, delta, A, B, C, D, z, delta_bias, state; scalars channels, length,
  d_state; outputs y, new_state. Grid (cdiv(D, BLOCK_D), batch).
- ``conv``: inputs x, weight, bias, conv_state; scalars channels, length; outputs y,
  new_conv_state. Grid (cdiv(L, BLOCK_L), cdiv(D, BLOCK_D), batch); the programs of the
  first time block also write the new state (the last K - 1 inputs of cat(state, x)).

The same wrappers serve the JIT path (`launch_scan`, `launch_conv`, from torch tensors:
the plugin's Python ``impl``, and the CPU tests under ``TRITON_INTERPRET=1``) and the AOT
path (`compile_scan`, `compile_conv` -> PTX for `tensorrt.plugin.aot_impl`). Triton is
imported on first use; AOT compilation needs ``TRITON_INTERPRET`` unset.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace

from . import conv_triton, scan_triton

# Bound by `_kernels()` on first use (see `scan_triton`'s docstring: why not at import).
triton = None
tl = None
_scan_body = None
_conv_body = None

SCAN_BLOCK_D, SCAN_WARPS = scan_triton.FWD_BLOCK_D, scan_triton.FWD_WARPS
CONV_BLOCK_D, CONV_BLOCK_L, CONV_WARPS = conv_triton.BLOCK_D, conv_triton.BLOCK_L, 4
TRITON_TYPES = {"FP32": "fp32", "FP16": "fp16", "BF16": "bf16"}  # TensorRT type name -> Triton's


def _scan_aot_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    channels, length, d_state,
    y_ptr, h_last_ptr,
    SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Dense (batch, D, L) / (batch, N, L) / (batch, D, N) tensors -> the project's scan kernel."""
    s_dl = tl.cast(length, tl.int64)  # a channel's row; int64 so batch strides cannot overflow
    s_b = s_dl * channels
    s_bn = s_dl * d_state
    _scan_body(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
        y_ptr, h_last_ptr, h_last_ptr,  # no checkpoints: inference only
        channels, length, d_state,
        s_b, s_dl, 1, s_b, s_dl, 1, s_bn, s_dl, 1, s_bn, s_dl, 1, s_b, s_dl, 1, s_b, s_dl, 1,
        HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=SOFTPLUS, HAS_H0=True, STORE_CKPT=False,
        CHUNK=scan_triton.CHECKPOINT_EVERY, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N,
    )


def _conv_aot_kernel(
    x_ptr, w_ptr, bias_ptr, state_ptr,
    channels, length,
    y_ptr, new_state_ptr,
    K: tl.constexpr, K1_POW2: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Dense x, y (batch, D, L), weight (D, K), state (batch, D, K-1) -> the project's conv
    kernel, plus the new state from the first time block's programs."""
    s_xd = tl.cast(length, tl.int64)
    s_xb = s_xd * channels
    s_sb = tl.cast(channels, tl.int64) * (K - 1)
    _conv_body(
        x_ptr, w_ptr, bias_ptr, state_ptr, y_ptr, channels, length,
        s_xb, s_xd, 1, s_sb, K - 1, 1, s_xb, s_xd, 1,
        K=K, HAS_BIAS=True, BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L,
    )
    if K > 1:  # noqa: SIM102  (a compile-time branch around a run-time one)
        if tl.program_id(0) == 0:
            d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
            b = tl.program_id(2).to(tl.int64)
            j = tl.arange(0, K1_POW2)
            ok = (d < channels)[:, None] & (j < K - 1)[None, :]
            # new_state[j] = cat(state, x)[L + j]: x[L + j - (K-1)] when that index is >= 0
            src = length + j - (K - 1)
            from_x = (src >= 0)[None, :]
            rows = b * channels + d.to(tl.int64)
            xv = tl.load(x_ptr + rows[:, None] * s_xd + src[None, :], mask=ok & from_x, other=0.0)
            sv = tl.load(state_ptr + rows[:, None] * (K - 1) + (length + j)[None, :], mask=ok & ~from_x, other=0.0)
            value = tl.where(from_x, xv.to(tl.float32), sv.to(tl.float32))
            tl.store(new_state_ptr + rows[:, None] * (K - 1) + j[None, :],
                     value.to(new_state_ptr.dtype.element_ty), mask=ok)


@functools.cache
def _kernels() -> SimpleNamespace:
    """Import Triton, bind the project's kernel bodies and wrap the two kernels (first call only)."""
    global triton, tl, _scan_body, _conv_body
    import triton
    import triton.language as tl

    scan_triton._kernels()  # binds `tl` in the kernel bodies' module
    conv_triton._kernel()
    _scan_body = triton.jit(scan_triton._scan_fwd_kernel)
    _conv_body = triton.jit(conv_triton._conv_fwd_kernel)
    return SimpleNamespace(scan=triton.jit(_scan_aot_kernel), conv=triton.jit(_conv_aot_kernel))


# ---------------------------------------------------------------------------------------
# Launch geometry: generic over the dim type (ints here, TensorRT shape expressions in
# `ops_trt`), so the JIT launch, the AOT launch parameters and the tests share one rule.
# ---------------------------------------------------------------------------------------


def next_pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def scan_scalars(u_shape, A_shape) -> tuple:
    """The scan's int32 arguments: channels, length, d_state."""
    return u_shape[1], u_shape[2], A_shape[1]


def scan_grid(u_shape, ceil_div=cdiv) -> tuple:
    """(cdiv(D, BLOCK_D), batch, 1)."""
    return ceil_div(u_shape[1], SCAN_BLOCK_D), u_shape[0], 1


def conv_scalars(x_shape) -> tuple:
    """The conv's int32 arguments: channels, length."""
    return x_shape[1], x_shape[2]


def conv_grid(x_shape, ceil_div=cdiv) -> tuple:
    """(cdiv(L, BLOCK_L), cdiv(D, BLOCK_D), batch)."""
    return ceil_div(x_shape[2], CONV_BLOCK_L), ceil_div(x_shape[1], CONV_BLOCK_D), x_shape[0]


def scan_constexprs(softplus: bool, d_state: int) -> dict:
    return {"SOFTPLUS": bool(softplus), "BLOCK_D": SCAN_BLOCK_D, "BLOCK_N": next_pow2(d_state)}


def conv_constexprs(kernel_size: int) -> dict:
    return {"K": int(kernel_size), "K1_POW2": next_pow2(max(kernel_size - 1, 1)), "BLOCK_D": CONV_BLOCK_D,
            "BLOCK_L": CONV_BLOCK_L}


def scan_signature(act: str) -> dict[str, str]:
    """Triton signature of the scan wrapper for activation type `act` (FP32, FP16, BF16)."""
    t, f = "*" + TRITON_TYPES[act], "*fp32"
    pointers = dict(zip(("u_ptr", "delta_ptr", "A_ptr", "B_ptr", "C_ptr", "D_ptr", "z_ptr", "bias_ptr", "h0_ptr"),
                        (t, f, f, t, t, f, t, f, f)))
    return {**pointers, "channels": "i32", "length": "i32", "d_state": "i32", "y_ptr": t, "h_last_ptr": f,
            "SOFTPLUS": "constexpr", "BLOCK_D": "constexpr", "BLOCK_N": "constexpr"}


def conv_signature(act: str) -> dict[str, str]:
    t = "*" + TRITON_TYPES[act]
    return {"x_ptr": t, "w_ptr": t, "bias_ptr": t, "state_ptr": t, "channels": "i32", "length": "i32",
            "y_ptr": t, "new_state_ptr": t, "K": "constexpr", "K1_POW2": "constexpr", "BLOCK_D": "constexpr",
            "BLOCK_L": "constexpr"}


# ---------------------------------------------------------------------------------------
# JIT launches (torch tensors: the plugins' Python impl, and the interpreter on CPU)
# ---------------------------------------------------------------------------------------


def launch_scan(u, delta, A, B, C, D, z, delta_bias, state, y, new_state, *, softplus: bool) -> None:
    """Run the scan wrapper on dense tensors (shapes in `trt_shapes.SCAN`), writing y and new_state."""
    tensors = (u, delta, A, B, C, D, z, delta_bias, state, y, new_state)
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("the plugin kernels take dense (contiguous) tensors")
    if u.numel() == 0:
        new_state.copy_(state)
        return
    _kernels().scan[scan_grid(u.shape)](
        u, delta, A, B, C, D, z, delta_bias, state, *scan_scalars(u.shape, A.shape), y, new_state,
        **scan_constexprs(softplus, A.shape[1]), num_warps=SCAN_WARPS)


def launch_conv(x, weight, bias, conv_state, y, new_conv_state) -> None:
    """Run the conv wrapper on dense tensors (shapes in `trt_shapes.CONV`)."""
    tensors = (x, weight, bias, conv_state, y, new_conv_state)
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("the plugin kernels take dense (contiguous) tensors")
    if x.numel() == 0:
        new_conv_state.copy_(conv_state)
        return
    state = conv_state if conv_state.numel() else x  # K = 1: nothing is read; a valid pointer
    _kernels().conv[conv_grid(x.shape)](
        x, weight, bias, state, *conv_scalars(x.shape), y, new_conv_state,
        **conv_constexprs(weight.shape[1]), num_warps=CONV_WARPS)


# ---------------------------------------------------------------------------------------
# AOT compilation (PTX for tensorrt.plugin.aot_impl)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledKernel:
    name: str
    ptx: str
    num_warps: int
    shared: int

    @property
    def block_x(self) -> int:
        return self.num_warps * 32


def _compile(fn, signature: dict, constexprs: dict, num_warps: int, target) -> CompiledKernel:
    from triton.compiler import ASTSource

    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=target, options={"num_warps": num_warps})
    scratch = getattr(compiled.metadata, "global_scratch_size", 0) or 0
    if scratch:  # TensorRT passes no scratch buffer (the kernels do not need one; keep it so)
        raise RuntimeError(f"{compiled.metadata.name} needs {scratch} bytes of Triton global scratch, "
                           "which a TensorRT AOT plugin cannot provide")
    return CompiledKernel(compiled.metadata.name, compiled.asm["ptx"], compiled.metadata.num_warps,
                          compiled.metadata.shared)


def compile_scan(act: str, *, softplus: bool, d_state: int, target=None) -> CompiledKernel:
    """PTX of the scan wrapper for activation type `act`. `target`: a
    ``triton.backends.compiler.GPUTarget`` (None: the current GPU)."""
    kernels = _kernels()
    return _compile(kernels.scan, scan_signature(act), scan_constexprs(softplus, d_state), SCAN_WARPS, target)


def compile_conv(act: str, *, kernel_size: int, target=None) -> CompiledKernel:
    """PTX of the conv wrapper for activation type `act` and `kernel_size` taps."""
    kernels = _kernels()
    return _compile(kernels.conv, conv_signature(act), conv_constexprs(kernel_size), CONV_WARPS, target)
