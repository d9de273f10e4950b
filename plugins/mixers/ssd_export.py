"""The SSD scan for ONNX export: standard ops, one graph for every sequence length.

A prefill runs the SSD matmul form over chunks of `EXPORT_CHUNK` tokens (the math of
`ssd_chunked`, written so that every dim stays dynamic: the node's body is traced once and
serves every model); a single token (decode) takes one recurrence step instead, through
``torch.cond`` (an ONNX ``If`` on ``L == 1``), so decoding does not pay for a padded chunk. `ssd_ops_onnx` traces this once, on its own, as the body of the ``hybrid::SSDScan`` node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Tokens per chunk in the exported graph: the intra-chunk tiles are (batch, H, Q, Q), so a
# smaller chunk than the eager default (256) keeps long prefills' temporaries small in ONNX Runtime.
EXPORT_CHUNK = 64


def ssd_scan_export(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                    state: Tensor) -> tuple[Tensor, Tensor]:
    """Shapes of `hybrid_mllm.core.ssd.ssd_scan`, every input present (D and state as tensors).

    x: (b, L, H, P)  dt: (b, L, H)  A, D: (H,)  B, C: (b, L, G, N)  state: (b, H, P, N)
    -> y: (b, L, H, P) in x's dtype, last state: (b, H, P, N) float32
    """
    operands = (x, dt.float(), A.float(), B, C, D.float(), state.float())
    if isinstance(x.shape[1], torch.SymInt):  # exporting with a dynamic length: both paths go into the graph
        # higher-order ops refuse operands that alias each other (B and C are views of one projection)
        return torch.cond(x.shape[1] == 1, _one_token, _chunks, tuple(_fresh(t) for t in operands))
    return _one_token(*operands) if x.shape[1] == 1 else _chunks(*operands)


def _one_token(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
               state: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrence step from `state`, written for any L so both `torch.cond` branches share
    shapes (exact at L = 1, the only length it is used at). Shapes as in `ssd_scan_export`."""
    Bh, Ch = _per_head(B, x.shape[2]), _per_head(C, x.shape[2])  # (b, L, H, N)
    decay = torch.exp(dt * A)[..., None, None]  # (b, L, H, 1, 1), exponent <= 0
    h = decay * state[:, None] + (dt[..., None] * x.float())[..., None] * Bh[:, :, :, None, :]  # (b, L, H, P, N)
    y = (h * Ch[:, :, :, None, :]).sum(-1) + D[:, None] * x.float()
    return _fresh(y.to(x.dtype)), _fresh(h[:, -1])


def _chunks(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
            state: Tensor) -> tuple[Tensor, Tensor]:
    """The SSD matmul form over chunks of EXPORT_CHUNK tokens, all chunks at once. Shapes as in
    `ssd_scan_export`. Written so that no op needs a guard on a dim: chunks by ``view`` with the
    chunk count, heads' groups by ``index_select``, the causal masks by comparing ``arange``s,
    the output's first L tokens by ``index_select`` (a slice would guard on L <= the padded length)."""
    batch, length, nheads, headdim = x.shape
    Q = EXPORT_CHUNK
    nc = (length + Q - 1) // Q
    pad = nc * Q - length
    Bh, Ch = _per_head(B, nheads), _per_head(C, nheads)  # (b, L, H, N)

    def chunked(t: Tensor) -> Tensor:  # (b, L, H, ...) -> (b, nc, Q, H, ...), padding with dt = 0
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.view(batch, nc, Q, *t.shape[2:])

    # per head, chunk and token: (b, H, nc, Q, ...), contiguous, so every matmul is a plain batched one
    xdt = chunked(x.float() * dt[..., None]).permute(0, 3, 1, 2, 4).contiguous()  # (b, H, nc, Q, P)
    Bc = chunked(Bh).permute(0, 3, 1, 2, 4).contiguous()  # (b, H, nc, Q, N)
    Cc = chunked(Ch).permute(0, 3, 1, 2, 4).contiguous()
    a = chunked(dt * A).permute(0, 3, 1, 2).contiguous()  # (b, H, nc, Q): log-decay per token, <= 0

    seg = _segsum(a)  # (b, H, nc, Q, Q)
    y = ((Cc @ Bc.transpose(-1, -2)) * torch.exp(seg)) @ xdt  # within each chunk: (b, H, nc, Q, P)
    to_end = torch.exp(seg[..., -1, :])  # (b, H, nc, Q): decay from token s to the chunk's end
    added = (xdt * to_end[..., None]).transpose(-1, -2) @ Bc  # the state each chunk adds: (b, H, nc, P, N)
    totals = F.pad(a.sum(-1), (1, 0))  # (b, H, 1 + nc): chunk c's total log-decay at c + 1
    starts = torch.cat([state[:, :, None], added], dim=2)  # (b, H, 1 + nc, P, N)
    states = (torch.exp(_segsum(totals)) @ starts.flatten(-2)).view(starts.shape)  # [z]: after z chunks
    entering = states.narrow(2, 0, nc)  # (b, H, nc, P, N)
    y = y + (Cc @ entering.transpose(-1, -2)) * torch.exp(torch.cumsum(a, dim=-1))[..., None]
    y = y.permute(0, 2, 3, 1, 4).reshape(batch, nc * Q, nheads, headdim)
    y = y.index_select(1, torch.arange(length, device=x.device))
    y = y + D[:, None] * x.float()
    return _fresh(y.to(x.dtype)), _fresh(states.select(2, nc))


def _per_head(BC: Tensor, nheads) -> Tensor:
    """(b, L, G, N) -> (b, L, H, N) float32, head h reading group h // (H // G) (an index, where
    repeat_interleave would guard on the repeat count)."""
    group = torch.arange(nheads, device=BC.device) // (nheads // BC.shape[2])
    return BC.float().index_select(2, group)


def _segsum(a: Tensor) -> Tensor:
    """(..., T) -> (..., T, T): ``[t, s] = a[s+1] + ... + a[t]`` summed term by term for s <= t,
    -inf above the diagonal (so exp() is the causal decay mask)."""
    idx = torch.arange(a.shape[-1], device=a.device)
    after = idx[:, None] > idx[None, :]  # [k, s]: k after s
    terms = torch.where(after, a[..., :, None], 0.0)
    return torch.where(idx[:, None] >= idx[None, :], torch.cumsum(terms, dim=-2), float("-inf"))


def _fresh(t: Tensor) -> Tensor:
    """A contiguous copy at offset 0: `torch.cond` needs both branches to return equal strides and offsets."""
    return t.clone(memory_format=torch.contiguous_format)
