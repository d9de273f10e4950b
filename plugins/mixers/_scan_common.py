"""Input preparation shared by the pure-PyTorch scan kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK = 16  # tokens per chunk of the chunked kernels (``chunked``, ``chunked_export``)


def effective_delta(delta: Tensor, delta_bias: Tensor | None, softplus: bool) -> Tensor:
    """``softplus(delta + delta_bias)`` (or without softplus) in float32; (batch, D, L)."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if softplus else delta


def prepare_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None,
                   softplus: bool, state: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The float32 operands every PyTorch kernel starts from: delta' (batch, D, L), A (D, N),
    B, C (batch, N, L) and the initial state (batch, D, N), zeros when None."""
    delta = effective_delta(delta, delta_bias, softplus)
    h0 = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32) if state is None else state.float()
    return delta, A.float(), B.float(), C.float(), h0


def finish_output(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """Skip connection ``D u`` and gate ``silu(z)``; returns u's dtype. y, u, z: (batch, D, L)."""
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)
