"""Mamba-2's SSD scan as one `torch.library` op: what its export path traces.

``hybrid::ssd_scan`` (ONNX node ``hybrid::SSDScan``)
    inputs  x (B, L, H, P) activations, dt (B, L, H) f32 (already softplus(dt + dt_bias), clamped,
            zero at padding), A (H,) f32, B (B, L, G, N), C (B, L, G, N) activations, D (H,) f32,
            state (B, H, P, N) f32
    outputs y (B, L, H, P) in x's type, new_state (B, H, P, N) f32
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t (outer) B_t,  y_t = h_t . C_t + D x_t  (head h reads group h // (H // G)).

Every input is present (zeros stand for a missing D or state), so a plugin has one fixed
signature; the chunk size is not an input (it changes no value; each implementation blocks the
sequence its own way). Eager, the op runs the project's best SSD kernel; its fake implementation
gives torch.export the output shapes. The conv of Mamba-2 is Mamba-1's ``hybrid::causal_conv1d``
(`ops`). The ONNX side is `ssd_ops_onnx`, ONNX Runtime's CPU side `ssd_ops_cpu`, TensorRT's `ssd_trt`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybrid_mllm.core.ssd import ssd_scan


@torch.library.custom_op("hybrid::ssd_scan", mutates_args=())
def ssd_scan_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                state: Tensor) -> tuple[Tensor, Tensor]:
    """Eager: the project's best SSD kernel. Shapes in the module docstring."""
    y, new_state = ssd_scan(x, dt, A, B, C, D, state)
    return y.contiguous(), new_state


@ssd_scan_op.register_fake
def _(x, dt, A, B, C, D, state):
    return torch.empty_like(x, memory_format=torch.contiguous_format), state.new_empty(state.shape,
                                                                                        dtype=torch.float32)


def ssd_via_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
               state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The scan signature `Mamba2.mix` takes, on top of ``hybrid::ssd_scan``."""
    batch, _, nheads, headdim = x.shape
    if D is None:
        D = A.new_zeros(nheads, dtype=torch.float32)
    if state is None:
        state = x.new_zeros(batch, nheads, headdim, B.shape[3], dtype=torch.float32)
    return torch.ops.hybrid.ssd_scan(x, dt.float(), A.float(), B, C, D.float(), state.float())
