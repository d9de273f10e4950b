"""The reference SSD scan: a sequential float32 loop over time. The definition."""

from __future__ import annotations

import torch
from torch import Tensor


def heads_of_groups(BC: Tensor, nheads: int) -> Tensor:
    """B or C per head: (batch, L, G, N) -> (batch, L, H, N), head h reading group h // (H // G)."""
    return BC.repeat_interleave(nheads // BC.shape[2], dim=2)


def ssd_scan_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, state: Tensor | None,
            chunk_size: int = 256) -> tuple[Tensor, Tensor]:
    """Same shapes as `hybrid_mllm.core.ssd.ssd_scan` (chunk_size is unused).

    x: (batch, L, H, P)  dt: (batch, L, H)  A: (H,)  B, C: (batch, L, G, N)  D: (H,)
    state: (batch, H, P, N) -> y: (batch, L, H, P) in x's dtype, last_state: (batch, H, P, N) float32
    """
    batch, length, nheads, headdim = x.shape
    B, C = heads_of_groups(B.float(), nheads), heads_of_groups(C.float(), nheads)
    x32, dt, A = x.float(), dt.float(), A.float()
    h = x.new_zeros(batch, nheads, headdim, B.shape[-1], dtype=torch.float32) if state is None else state.float()
    ys: list[Tensor] = []
    for t in range(length):
        dA = torch.exp(dt[:, t] * A)  # (batch, H)
        dBx = (dt[:, t, :, None] * x32[:, t])[..., None] * B[:, t, :, None, :]  # (batch, H, P, N)
        h = dA[:, :, None, None] * h + dBx
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    y = torch.stack(ys, dim=1) if ys else x32.new_zeros(batch, 0, nheads, headdim)
    if D is not None:
        y = y + x32 * D.float()[:, None]
    return y.to(x.dtype), h
