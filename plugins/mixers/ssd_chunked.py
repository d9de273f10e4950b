"""The SSD scan in its matmul form (Dao & Gu, 2024, section 6), standard PyTorch ops only.

The sequence is cut into chunks of Q tokens (the last one padded with dt = 0, which decays
nothing and adds nothing). Inside a chunk, y is a masked attention-like product
``(C B^T o L) (dt x)`` with the decay mask ``L[t, s] = exp(sum of dt A from s + 1 to t)``; the
state each chunk leaves is a matmul as well, and the states are passed from chunk to chunk
through the chunk-level decays, all chunks at once. Every segment sum is summed term by term
(never the difference of two running sums, which loses every digit after a spike in dt) and
only those sums, never positive, are exponentiated. No Python loop over chunks; but
torch.export (torch 2.14) with a dynamic L does not trace it yet: reshaping the padded sequence
into (chunks, chunk_size) adds guards on L that it cannot prove for every L (divisibility by
the traced chunk count, a chunk count other than 1), so it is not marked export_safe. A matmul sums 0 times a later
token's NaN or inf into earlier outputs, so in eager mode such inputs take the sequential
definition (`ssd_ref`) instead, where they spoil the outputs from their token on only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ssd_ref import ssd_scan_ref


def segsum(a: Tensor) -> Tensor:
    """Segment sums of log-decays: a: (..., T) -> (..., T, T), ``[t, s] = a[s+1] + ... + a[t]``
    for s <= t (0 on the diagonal) and -inf above it, so that exp() is the causal decay mask."""
    T = a.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    terms = a[..., :, None].expand(*a.shape, T).masked_fill(~ones.tril(-1), 0.0)  # [j, s]: a[j] where j > s
    return torch.cumsum(terms, dim=-2).masked_fill(~ones.tril(), float("-inf"))


def _suffix_sums(a: Tensor) -> Tensor:
    """a: (..., Q) -> (..., Q): ``a[s+1] + ... + a[Q-1]``, the log-decay from s to the chunk's end."""
    inclusive = torch.flip(torch.cumsum(torch.flip(a, [-1]), -1), [-1])
    return F.pad(inclusive[..., 1:], (0, 1))


def ssd_scan_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, state: Tensor | None,
                chunk_size: int = 256) -> tuple[Tensor, Tensor]:
    """Same shapes as `hybrid_mllm.core.ssd.ssd_scan`. Needs A <= 0 and dt >= 0.

    x: (b, L, H, P)  dt: (b, L, H)  A: (H,)  B, C: (b, L, G, N)  D: (H,)  state: (b, H, P, N)
    -> y: (b, L, H, P) in x's dtype, last_state: (b, H, P, N) float32
    """
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2], B.shape[3]
    if not torch.compiler.is_exporting():
        if not all(bool(torch.isfinite(t).all()) for t in (x, dt, B)):
            return ssd_scan_ref(x, dt, A, B, C, D, state)
        chunk_size = max(1, min(chunk_size, length))  # a short input (decoding) is one short chunk
    pad = (-length) % chunk_size
    # (b, c, Q, ...) chunks; heads split as (G, R): head g * R + r reads group g
    x32 = F.pad(x.float(), (0, 0, 0, 0, 0, pad)).unflatten(1, (-1, chunk_size))
    dt = F.pad(dt.float(), (0, 0, 0, pad)).unflatten(1, (-1, chunk_size))  # (b, c, Q, H)
    B = F.pad(B.float(), (0, 0, 0, 0, 0, pad)).unflatten(1, (-1, chunk_size))  # (b, c, Q, G, N)
    C = F.pad(C.float(), (0, 0, 0, 0, 0, pad)).unflatten(1, (-1, chunk_size))
    xdt = (x32 * dt[..., None]).unflatten(3, (ngroups, -1))  # (b, c, Q, G, R, P)
    a = (dt * A.float()).transpose(2, 3).unflatten(2, (ngroups, -1))  # (b, c, G, R, Q): log-decay per token
    h0 = x.new_zeros(batch, nheads, headdim, d_state, dtype=torch.float32) if state is None else state.float()

    # 1. within each chunk: y_t = sum_{s <= t} (C_t . B_s) L[t, s] dt_s x_s
    scores = torch.einsum("bctgn,bcsgn->bcgts", C, B)[:, :, :, None] * torch.exp(segsum(a))  # (b, c, G, R, Q, Q)
    y = torch.einsum("bcgrts,bcsgrp->bctgrp", scores, xdt)
    # 2. the state each chunk adds by its end, from a zero state
    to_end = torch.exp(_suffix_sums(a))  # (b, c, G, R, Q)
    added = torch.einsum("bcsgn,bcgrs,bcsgrp->bcgrpn", B, to_end, xdt)  # (b, c, G, R, P, N)
    # 3. the state entering each chunk: h0 and every earlier chunk's addition, decayed
    totals = F.pad(a.sum(-1), (0, 0, 0, 0, 1, 0))  # (b, 1 + c, G, R): chunk c's log-decay at c + 1
    decay = torch.exp(segsum(totals.permute(0, 2, 3, 1)))  # (b, G, R, 1 + c, 1 + c)
    starts = torch.cat([h0.unflatten(1, (ngroups, -1))[:, None], added], dim=1)  # (b, 1 + c, G, R, P, N)
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", decay, starts)  # [z]: the state after z chunks
    # 4. the entering state's part of each output, decayed from the chunk's start
    from_start = torch.exp(torch.cumsum(a, dim=-1))  # (b, c, G, R, Q)
    y = y + torch.einsum("bctgn,bcgrpn,bcgrt->bctgrp", C, states[:, :-1], from_start)

    y = y.flatten(3, 4).flatten(1, 2)[:, :length]  # (b, L, H, P)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype), states[:, -1].flatten(1, 2)
