"""Mamba's scan and conv as single `torch.library` ops: what its export path traces.

``hybrid::selective_scan`` (ONNX node ``hybrid::SelectiveScan``)
    inputs  u (B, D, L), delta (B, D, L) any float type, A (D, N) f32, B (B, N, L), C (B, N, L), D (D,) f32,
            z (B, D, L), delta_bias (D,) f32, state (B, D, N) f32
    outputs y (B, D, L) in u's type, new_state (B, D, N) f32
    attribute softplus (bool): delta' = softplus(delta + delta_bias) when set, delta + delta_bias when not;
    h_t = exp(delta'_t A) h_{t-1} + delta'_t B_t u_t,  y_t = (C_t . h_t + D u_t) * silu(z_t).
``hybrid::causal_conv1d`` (ONNX node ``hybrid::CausalConv1d``)
    inputs  x (B, D, L), weight (D, K), bias (D,), conv_state (B, D, K-1)
    outputs y (B, D, L), new_conv_state (B, D, K-1) = the last K-1 inputs of cat(conv_state, x)
    y_t = bias + sum_k weight[:, k] * cat(conv_state, x)[:, t + k].

Every input is present (zeros stand for a missing bias or skip), so a plugin has one fixed
signature. Eager, the ops run the project's kernels; their fake implementations give
torch.export the output shapes. Their ONNX side (schemas, translations, standard-op body)
is `ops_onnx`, their ONNX Runtime CPU side `ops_cpu`, their TensorRT plugins `ops_trt`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybrid_mllm.core.scan import selective_scan

from .conv import causal_conv1d


@torch.library.custom_op("hybrid::selective_scan", mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
                      delta_bias: Tensor, state: Tensor, softplus: bool) -> tuple[Tensor, Tensor]:
    """Eager: the project's best scan kernel. Shapes in the module docstring."""
    y, new_state = selective_scan(u, delta, A, B, C, D, z, delta_bias, softplus, state)
    return _time_major(y), new_state


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, state, softplus):
    return _time_major_empty(u), state.new_empty(state.shape, dtype=torch.float32)


@torch.library.custom_op("hybrid::causal_conv1d", mutates_args=())
def causal_conv1d_op(x: Tensor, weight: Tensor, bias: Tensor, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """Eager: the project's causal conv. Shapes in the module docstring."""
    y, new_state = causal_conv1d(x, weight, bias, conv_state)
    return _time_major(y), new_state.clone()  # a custom op may not return a view of its input


@causal_conv1d_op.register_fake
def _(x, weight, bias, conv_state):
    return _time_major_empty(x), x.new_empty(conv_state.shape)


def _time_major(t: Tensor) -> Tensor:
    """(B, D, L) stored as (B, L, D), the layout Mamba's projections produce and consume:
    with a plain (B, D, L) layout, the next ``transpose(1, 2)`` + Linear makes torch.export
    guard on L != 1 (whether the transpose is a contiguous view)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _time_major_empty(like: Tensor) -> Tensor:
    """An uninitialised (B, D, L) tensor in `_time_major` layout (for the fake implementations)."""
    batch, channels, length = like.shape
    return like.new_empty(batch, length, channels).transpose(1, 2)


def scan_via_op(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """The signature of `hybrid_mllm.core.scan.selective_scan` on top of ``hybrid::selective_scan``."""
    if z is None:
        raise ValueError("hybrid::SelectiveScan needs the gate z (Mamba always passes it)")
    batch, channels = u.shape[:2]
    zeros = A.new_zeros(channels, dtype=torch.float32)
    if state is None:
        state = u.new_zeros(batch, channels, A.shape[1], dtype=torch.float32)
    return torch.ops.hybrid.selective_scan(u, delta, A.float(), B, C, zeros if D is None else D.float(), z,
                                           zeros if delta_bias is None else delta_bias.float(), state.float(),
                                           softplus)


def conv_via_op(x: Tensor, weight: Tensor, bias: Tensor | None, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """The signature of `conv.causal_conv1d` on top of ``hybrid::causal_conv1d``."""
    bias = x.new_zeros(weight.shape[0]) if bias is None else bias
    return torch.ops.hybrid.causal_conv1d(x, weight, bias, conv_state.to(x.dtype))
