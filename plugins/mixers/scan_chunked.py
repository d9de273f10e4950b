"""Chunked selective scan in standard PyTorch ops: the export path and the CPU fallback.

The sequence is cut into chunks of `CHUNK` tokens and the state is carried from chunk
to chunk. Inside a chunk every output is a sum over earlier tokens weighted by
``exp(seg_ts)``, seg_ts the segment sum of log-decays ``delta * A`` from s + 1 to t. Only
those sums (never positive when A <= 0) are exponentiated, so nothing overflows, unlike
the ``exp(cs_t) * cumsum(x exp(-cs_s))`` shortcut; and each is summed term by term, not
taken as the difference of two running sums, which loses every digit after a spike in
delta. Temporaries are (batch, D, CHUNK, CHUNK, N) per chunk: they do not grow with the
sequence length. A NaN or inf input spoils the outputs from its token on, as in ``ref``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._scan_common import CHUNK, finish_output, prepare_inputs


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """Same signature and shapes as `hybrid_mllm.core.scan.selective_scan`. Needs A <= 0."""
    batch, channels, length = u.shape
    delta, A, B, C, h = prepare_inputs(u, delta, A, B, C, delta_bias, softplus, state)
    x = delta * u.float()  # (batch, D, L): delta_t u_t, multiplied by B_t inside the chunk
    # a matmul sums 0 * a later token's NaN into earlier outputs: then take the slower masked sum
    finite = bool(torch.isfinite(x).all() and torch.isfinite(B).all())
    ys = []
    for start in range(0, length, CHUNK):
        end = min(start + CHUNK, length)
        y, h = _chunk(h, delta[:, :, start:end], x[:, :, start:end], A, B[:, :, start:end], C[:, :, start:end],
                      finite=finite)
        ys.append(y)
    y = torch.cat(ys, dim=-1) if ys else u.new_zeros(batch, channels, 0, dtype=torch.float32)
    return finish_output(y, u, D, z), h


def _chunk(h0: Tensor, delta: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, *,
           finite: bool) -> tuple[Tensor, Tensor]:
    """One chunk of Q tokens from state h0; `finite`: x and B hold no NaN or inf.

    h0: (b, d, n)  delta, x: (b, d, Q)  A: (d, n)  B, C: (b, n, Q) -> y: (b, d, Q), h: (b, d, n)
    """
    q = delta.shape[-1]
    # log-decay from the chunk start, summed in float64: a float32 running sum is off by
    # eps * |sum| after a large log-decay (a spike in delta), and every seg_ts after it with it
    cs = torch.cumsum(delta[..., None].double() * A[:, None, :], dim=2)  # (b, d, Q, n)
    seg = (cs[:, :, :, None, :] - cs[:, :, None, :, :]).float()  # (b, d, Q_t, Q_s, n): sum of dA from s+1 to t
    causal = torch.ones(q, q, dtype=torch.bool, device=delta.device).tril()[:, :, None]  # (Q_t, Q_s, 1)
    decay = torch.exp(seg.masked_fill(~causal, float("-inf")))  # 0 above the diagonal
    xB = x[:, :, :, None] * B.transpose(1, 2)[:, None, :, :]  # (b, d, Q_s, n)
    if finite:
        inner = torch.einsum("bdtsn,bdsn->bdtn", decay, xB)  # (b, d, Q_t, n)
    else:
        inner = torch.where(causal, decay * xB[:, :, None], 0.0).sum(3)
    h_t = inner + torch.exp(cs).float() * h0[:, :, None, :]  # (b, d, Q, n)
    y = torch.einsum("bdtn,bnt->bdt", h_t, C)
    return y.contiguous(), h_t[:, :, -1].clone()  # copies: views would keep whole chunk temporaries alive
