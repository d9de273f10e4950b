"""Causal depthwise conv1d with state in Triton (forward only).

Same signature and result as `hybrid_mllm.plugins.mixers.conv.causal_conv1d`. The
kernel computes the forward; when a gradient is needed the call falls back to the
PyTorch op, whose autograd is exact (there is no Triton backward).

Triton is imported on first use, never at module import (see `scan_triton`); the
kernel is a plain function compiled by ``triton.jit`` in `_kernel`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .conv import causal_conv1d

# Bound by `_kernel()` on first use.
triton = None
tl = None

BLOCK_D, BLOCK_L = 16, 64


def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, state_ptr, y_ptr,
    channels, length,
    s_xb, s_xd, s_xl, s_sb, s_sd, s_sl, s_yb, s_yd, s_yl,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """One (BLOCK_D channels, BLOCK_L tokens) tile of batch row pid2.

    x, y: (batch, D, L)  w: (D, K) contiguous  bias: (D,)  state: (batch, D, K-1).
    y[t] = bias + sum_k w[k] * x_full[t + k], with x_full = cat(state, x) along time:
    index j = t + k - (K - 1) reads x[j] when j >= 0 and state[j + K - 1] when j < 0.
    """
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.program_id(0).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    b = tl.program_id(2).to(tl.int64)
    d_ok = d < channels
    d64 = d.to(tl.int64)
    x_row = x_ptr + b * s_xb + d64[:, None] * s_xd
    s_row = state_ptr + b * s_sb + d64[:, None] * s_sd
    acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for k in tl.static_range(K):
        j = t + (k - (K - 1))
        w = tl.load(w_ptr + d64 * K + k, mask=d_ok, other=0.0).to(tl.float32)
        in_x = (j >= 0) & (j < length)
        xv = tl.load(x_row + j[None, :] * s_xl, mask=d_ok[:, None] & in_x[None, :], other=0.0)
        sv = tl.load(s_row + (j + (K - 1))[None, :] * s_sl, mask=d_ok[:, None] & (j < 0)[None, :], other=0.0)
        # The state enters in x's dtype, as in the PyTorch op (which casts it).
        xv = xv.to(tl.float32) + sv.to(x_ptr.dtype.element_ty).to(tl.float32)
        acc += w[:, None] * xv
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[:, None]
    y_p = y_ptr + b * s_yb + d64[:, None] * s_yd + t[None, :] * s_yl
    tl.store(y_p, acc.to(y_ptr.dtype.element_ty), mask=d_ok[:, None] & (t < length)[None, :])


@functools.cache
def _kernel():
    """Import Triton and compile-wrap the kernel (first call only)."""
    global triton, tl
    import triton
    import triton.language as tl

    return triton.jit(_conv_fwd_kernel)


def causal_conv1d_triton(x: Tensor, weight: Tensor, bias: Tensor | None, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """Depthwise causal convolution continuing from `conv_state`; Triton forward.

    x: (B, D, L)  weight: (D, K)  bias: (D,)  conv_state: (B, D, K-1), the inputs before x
    -> y: (B, D, L) in x's dtype, new conv_state: (B, D, K-1) in x's dtype.
    Falls back to the PyTorch `causal_conv1d` when a gradient is needed.
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, conv_state)):
        return causal_conv1d(x, weight, bias, conv_state)
    batch, channels, length = x.shape
    kernel = weight.shape[-1]
    y = torch.empty_like(x)
    if batch * channels * length:
        grid = (-(-length // BLOCK_L), -(-channels // BLOCK_D), batch)
        state = conv_state if conv_state.numel() else x  # K = 1: no state is read; pass a valid pointer
        _kernel()[grid](
            x, weight.contiguous(), bias if bias is not None else weight, state, y,
            channels, length,
            *x.stride(), *state.stride(), *y.stride(),
            K=kernel, HAS_BIAS=bias is not None, BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L,
        )
    # The new state is the last K-1 inputs of cat(state, x): a few columns, plain torch.
    tail = x[:, :, max(length - (kernel - 1), 0):]
    x_tail = torch.cat([conv_state.to(x.dtype), tail], dim=-1)
    return y, x_tail[:, :, x_tail.shape[-1] - (kernel - 1):]
