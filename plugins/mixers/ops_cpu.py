"""Mamba's custom nodes on ONNX Runtime's CPU provider (the custom flavour without TensorRT).

onnxruntime-extensions calls these Python functions for the graph's ``SelectiveScan`` and
``CausalConv1d`` nodes (numpy arrays in and out; shapes in `ops`). The scan runs the
project's fused C kernel (``cpu_fused``, the one PyTorch eager uses on a CPU) on the arrays'
memory, without copies; where that kernel cannot be built (no C compiler) it runs the numpy
reference, a sequential loop that is only fast enough for checking a graph. The conv runs
the eager mixer's own conv (`conv.causal_conv1d`). Both numpy references stay here: they
are the definitions the fast paths are tested against.
"""

from __future__ import annotations

import numpy as np
import torch

from . import conv, scan_cpu


def selective_scan(u, delta, A, B, C, D, z, delta_bias, state, **attrs):
    """``hybrid::SelectiveScan`` (shapes in `ops`): the fused kernel, else the numpy reference.

    u, delta, z: (b, d, L)  A: (d, n)  B, C: (b, n, L)  D, delta_bias: (d,)  state: (b, d, n)
    -> y: (b, d, L) in u's dtype, new_state: (b, d, n) float32
    """
    if scan_cpu.available(torch.device("cpu")) is not None:
        return reference_selective_scan(u, delta, A, B, C, D, z, delta_bias, state, **attrs)
    t = _tensors(u, delta, A, B, C, D, z, delta_bias, state)
    y, h = scan_cpu.selective_scan_cpu_fused(*t[:8], softplus=bool(attrs.get("softplus")), state=t[8])
    return y.numpy(), h.numpy()


def causal_conv1d(x, weight, bias, conv_state):
    """``hybrid::CausalConv1d``: x (b, d, L), weight (d, K), bias (d,), conv_state (b, d, K-1)
    -> y (b, d, L), new_conv_state (b, d, K-1)."""
    y, new_state = conv.causal_conv1d(*_tensors(x, weight, bias, conv_state))
    return y.contiguous().numpy(), new_state.contiguous().numpy()


def _tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    """Tensors sharing the arrays' memory (read-only arrays are copied: torch needs writable memory)."""
    return [torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays]


def reference_selective_scan(u, delta, A, B, C, D, z, delta_bias, state, **attrs):
    """numpy, sequential over time: the definition in `ops`' docstring."""
    delta = delta.astype(np.float32) + delta_bias[:, None]
    if attrs.get("softplus"):
        delta = np.logaddexp(0.0, delta)  # softplus without overflow
    h = state.astype(np.float32).copy()
    ys = np.empty(u.shape, dtype=np.float32)
    for t in range(u.shape[2]):
        h = np.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys[:, :, t] = np.einsum("bdn,bn->bd", h, C[:, :, t])
    y = (ys + u * D[:, None]) * (z / (1.0 + np.exp(-z)))
    return y.astype(u.dtype), h


def reference_causal_conv1d(x, weight, bias, conv_state):
    """numpy: y_t = bias + sum_k weight[:, k] * cat(conv_state, x)[:, t + k]."""
    kernel, length = weight.shape[1], x.shape[2]
    full = np.concatenate([conv_state.astype(x.dtype), x], axis=2)
    y = sum(full[:, :, k:k + length] * weight[None, :, k, None] for k in range(kernel)) + bias[None, :, None]
    return y.astype(x.dtype), np.ascontiguousarray(full[:, :, full.shape[2] - (kernel - 1):])
