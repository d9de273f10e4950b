"""Selective scan for ONNX export: standard ops, one graph for every sequence length.

The sequence is zero-padded to whole chunks of `CHUNK` tokens (delta = 0 is a step that
keeps the state and adds nothing, so padding cannot change the result). One chunk is a
fixed, unrolled recurrence of `CHUNK` steps over (batch, D, N) tensors; the chunks are
walked by ``torch.ops.higher_order.scan``, which the exporter turns into a single ONNX
``Scan`` node. Nothing in the graph depends on the example length: a Python loop over the
tokens or chunks would make the exporter silently specialise the sequence axis to the
example's length (a graph that then refuses, or miscomputes, every other length). A single token (decode) skips the padding through ``torch.cond`` (an ONNX
``If`` on ``L == 1``), so the same graph decodes at the cost of one recurrence step.

Only ``exp(delta * A)`` with ``delta >= 0, A <= 0`` is exponentiated: never positive, so
nothing overflows at any length. Temporaries are (CHUNK, batch, D, N) per chunk.

In eager mode (an int length) the same chunk body runs in a Python loop: torch's eager
``scan`` traces its body on every call, which is slow, and the math is identical.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid_mllm.core.scan import ScanKernel

from ._scan_common import CHUNK, finish_output, prepare_inputs

# torch.scan is a prototype API without a public module path yet.
_scan_hop = importlib.import_module("torch._higher_order_ops.scan").scan


def selective_scan_chunked_export(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """Same signature and shapes as `hybrid_mllm.core.scan.selective_scan`. Needs A <= 0.

    u, delta, z: (batch, D, L)  A: (D, N)  B, C: (batch, N, L)  state: (batch, D, N)
    -> y: (batch, D, L), last_state: (batch, D, N) float32
    """
    batch, channels, length = u.shape
    delta, A, B, C, h0 = prepare_inputs(u, delta, A, B, C, delta_bias, softplus, state)
    x = delta * u.float()  # delta_t u_t, multiplied by B_t inside the recurrence
    operands = (delta, x, A, B, C, h0)
    if isinstance(length, torch.SymInt):  # exporting with a dynamic length: both paths go into the graph
        # higher-order ops refuse operands that alias each other (B and C are views of one projection)
        # (the branch is told it is traced: inside torch.cond, shapes no longer look symbolic)
        y, h = torch.cond(length == 1, _one_token, lambda *ops: _chunks(*ops, traced=True),
                          tuple(_fresh(t) for t in operands))
    elif length == 0:  # as every kernel: an empty output and the initial state
        y, h = delta.new_zeros(batch, channels, 0), h0
    elif length == 1:
        y, h = _one_token(*operands)
    else:
        y, h = _chunks(*operands, traced=False)
    return finish_output(y, u, D, z), h


def _one_token(delta: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrence step, written for any L so both `torch.cond` branches share shapes (used at L = 1).

    delta, x: (b, d, L)  A: (d, n)  B, C: (b, n, L)  h0: (b, d, n) -> y (b, d, L), h (b, d, n)
    """
    h = torch.exp(delta[..., None] * A[:, None, :]) * h0[:, :, None, :] + x[..., None] * B.transpose(1, 2)[:, None]
    y = (h * C.transpose(1, 2)[:, None]).sum(-1)  # (b, d, L)
    return _fresh(y), _fresh(h[:, :, -1])


def _chunks(delta: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, *,
            traced: bool) -> tuple[Tensor, Tensor]:
    """All chunks from state h0, as one scan when `traced`, else a Python loop. Shapes as in `_one_token`."""
    b, d, length = delta.shape
    n = A.shape[1]
    nc = (length + CHUNK - 1) // CHUNK
    pad = nc * CHUNK - length
    delta, x, B, C = (F.pad(t, (0, pad)) for t in (delta, x, B, C))

    def chunked(t: Tensor, rows: int) -> Tensor:  # (b, rows, nc * CHUNK) -> (nc, CHUNK, b, rows)
        return t.view(b, rows, nc, CHUNK).permute(2, 3, 0, 1)

    xs = (chunked(delta, d), chunked(x, d), chunked(B, n), chunked(C, n))
    # Inside the chunks the state is (b, n, d): d, the long axis, is innermost, so every
    # broadcast below runs over contiguous rows of d values (fast in ONNX Runtime).
    A_t = A.t().contiguous()  # (n, d)

    def body(h: Tensor, chunk: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return _chunk(A_t, h, *chunk)

    h0 = h0.transpose(1, 2).contiguous()  # (b, n, d)
    if traced:
        h, ys = _scan_hop(body, h0, xs)
    else:
        h, parts = h0, []
        for i in range(nc):
            h, y = body(h, tuple(t[i] for t in xs))
            parts.append(y)
        ys = torch.stack(parts)
    # (nc, CHUNK, b, d) -> (b, d, L). index_select, not a slice: a slice [:L] of the padded
    # axis makes the exporter guard on L <= padded length, which it cannot prove.
    y = ys.reshape(nc * CHUNK, b, d).index_select(0, torch.arange(length, device=ys.device)).permute(1, 2, 0)
    return _fresh(y), _fresh(h.transpose(1, 2))


def _chunk(A_t: Tensor, h: Tensor, delta: Tensor, x: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """CHUNK tokens from state h, unrolled.

    A_t: (n, d)  h: (b, n, d)  delta, x: (Q, b, d)  B, C: (Q, b, n) -> h: (b, n, d), y: (Q, b, d)

    Written for few graph nodes per token (ONNX Runtime pays a fixed cost per node, and
    these tensors are small): one Split per input instead of an index per step, the
    state kept as (1, b, n, d) so the slices need no squeeze, and the output contraction
    with C done once for the chunk: two nodes (Mul, Add) per token.
    """
    decay = torch.exp(delta[:, :, None, :] * A_t).split(1)  # Q x (1, b, n, d), exponent <= 0
    inputs = (x[:, :, None, :] * B[..., None]).split(1)  # Q x (1, b, n, d)
    h = h[None]
    states = []
    for t in range(CHUNK):  # a fixed count, not the sequence length
        h = decay[t] * h + inputs[t]
        states.append(h)
    y = (C[:, :, None, :] @ torch.cat(states)).squeeze(2)  # (Q, b, 1, n) @ (Q, b, n, d) -> (Q, b, d)
    return _fresh(h[0]), y


def _fresh(t: Tensor) -> Tensor:
    """A contiguous copy at offset 0: `torch.cond` needs both branches to return equal strides and offsets."""
    return t.clone(memory_format=torch.contiguous_format)


CHUNKED_EXPORT = ScanKernel(
    fn=selective_scan_chunked_export,
    # Runs everywhere, never chosen by ``auto``: the export selects it by name.
    priority=dict.fromkeys(("cpu", "cuda", "mps", "xpu"), 1),
    description=f"ONNX export path: chunks of {CHUNK} tokens as one Scan node, L = 1 as an If branch, standard ops",
    export_safe=True,
)
