"""The reference selective scan: a sequential float32 loop over time. The definition."""

from __future__ import annotations

import torch
from torch import Tensor

from ._scan_common import finish_output, prepare_inputs


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """Same signature and shapes as `hybrid_mllm.core.scan.selective_scan`.

    u, delta, z: (batch, D, L)  A: (D, N)  B, C: (batch, N, L)  state: (batch, D, N)
    -> y: (batch, D, L), last_state: (batch, D, N) float32
    """
    batch, channels, length = u.shape
    delta, A, B, C, h = prepare_inputs(u, delta, A, B, C, delta_bias, softplus, state)
    ys: list[Tensor] = []
    for t in range(length):
        dA = torch.exp(delta[:, :, t, None] * A)  # (batch, D, N)
        dBu = (delta[:, :, t] * u[:, :, t].float())[:, :, None] * B[:, None, :, t]
        h = dA * h + dBu
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, channels, 0, dtype=torch.float32)
    return finish_output(y, u, D, z), h
