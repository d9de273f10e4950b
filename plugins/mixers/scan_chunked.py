"""Chunked selective scan in standard PyTorch ops: the export path and the CPU fallback.

The sequence is cut into chunks of `CHUNK` tokens and the state is carried from chunk
to chunk. Inside a chunk every output is a sum over earlier tokens weighted by
``exp(cs_t - cs_s)``, the segment sum of log-decays ``delta * A`` between s and t. Only
those differences (never positive when A <= 0) are exponentiated, so nothing overflows,
unlike the ``exp(cs_t) * cumsum(x exp(-cs_s))`` shortcut. Temporaries are
(batch, D, CHUNK, CHUNK, N) per chunk: they do not grow with the sequence length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._scan_common import finish_output, prepare_inputs

CHUNK = 16


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """Same signature and shapes as `hybrid_mllm.core.scan.selective_scan`. Needs A <= 0."""
    batch, channels, length = u.shape
    delta, A, B, C, h = prepare_inputs(u, delta, A, B, C, delta_bias, softplus, state)
    x = delta * u.float()  # (batch, D, L): delta_t u_t, multiplied by B_t inside the chunk
    ys = []
    for start in range(0, length, CHUNK):
        end = min(start + CHUNK, length)
        y, h = _chunk(h, delta[:, :, start:end], x[:, :, start:end], A, B[:, :, start:end], C[:, :, start:end])
        ys.append(y)
    y = torch.cat(ys, dim=-1) if ys else u.new_zeros(batch, channels, 0, dtype=torch.float32)
    return finish_output(y, u, D, z), h


def _chunk(h0: Tensor, delta: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk of Q tokens from state h0.

    h0: (b, d, n)  delta, x: (b, d, Q)  A: (d, n)  B, C: (b, n, Q) -> y: (b, d, Q), h: (b, d, n)
    """
    q = delta.shape[-1]
    cs = torch.cumsum(delta[..., None] * A[:, None, :], dim=2)  # (b, d, Q, n) log-decay from chunk start
    seg = cs[:, :, :, None, :] - cs[:, :, None, :, :]  # (b, d, Q_t, Q_s, n) = cs_t - cs_s
    causal = torch.ones(q, q, dtype=torch.bool, device=delta.device).tril()
    decay = torch.exp(seg.masked_fill(~causal[:, :, None], float("-inf")))  # 0 above the diagonal
    xB = x[:, :, :, None] * B.transpose(1, 2)[:, None, :, :]  # (b, d, Q_s, n)
    h_t = torch.einsum("bdtsn,bdsn->bdtn", decay, xB) + torch.exp(cs) * h0[:, :, None, :]  # (b, d, Q, n)
    y = torch.einsum("bdtn,bnt->bdt", h_t, C)
    return y.contiguous(), h_t[:, :, -1].clone()  # copies: views would keep whole chunk temporaries alive
