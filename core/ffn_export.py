"""The MoE layer in a form the exporter can trace: one op per expert, sparse in the graph.

`MoE` groups tokens by expert with Python-int counts
(``bincount(...).tolist()``), which torch.export cannot trace with a dynamic token count,
and a data-dependent ``nonzero`` in the traced graph breaks the exporter's handling of
the scan's ``torch.cond`` (pending unbacked symbols). So during export each expert is one
opaque op, ``hybrid_export::moe_expert_add``, with a static output shape for tracing, and
its ONNX translation is standard ops that touch only the routed tokens:
``NonZero(chosen == e) -> Gather -> 3 Gemm (SwiGLU) -> * weight -> ScatterND(add)``.
The result is the same sum over each token's top-k experts (up to float summation order).
The routing is `MoE.route` itself. Imported only when exporting (it needs onnxscript).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnxscript import opset18 as op
from torch import Tensor, nn

from .exportable import TracedOp
from .ffn import MoE


@torch.library.custom_op("hybrid_export::moe_expert_add", mutates_args=())
def moe_expert_add(y: Tensor, tokens: Tensor, chosen: Tensor, weights: Tensor, expert: int, gate: Tensor,
                   up: Tensor, down: Tensor, gate_bias: Tensor | None, up_bias: Tensor | None,
                   down_bias: Tensor | None) -> Tensor:
    """y + expert e's SwiGLU output, times its routing weight, at the tokens routed to e.

    y, tokens: (T, d)  chosen: (T, k) int64  weights: (T, k) in tokens' dtype
    gate, up: (h, d)  down: (d, h)  biases: (h,), (h,), (d,) or None  -> (T, d)
    """
    token_idx, slot = torch.where(chosen == expert)
    x = tokens[token_idx]
    out = F.linear(F.silu(F.linear(x, gate, gate_bias)) * F.linear(x, up, up_bias), down, down_bias)
    return y.index_add(0, token_idx, out * weights[token_idx, slot, None])


@moe_expert_add.register_fake
def _(y, tokens, chosen, weights, expert, gate, up, down, gate_bias, up_bias, down_bias):
    return torch.empty_like(y)


def moe_expert_add_onnx(y, tokens, chosen, weights, expert: int, gate, up, down, gate_bias=None, up_bias=None,
                        down_bias=None):
    """The ONNX translation of `moe_expert_add` (standard opset-18 ops)."""
    hits = op.NonZero(op.Equal(chosen, op.Constant(value_int=expert)))  # (2, n): token index, slot
    token_idx = op.Gather(hits, op.Constant(value_int=0), axis=0)  # (n,)
    x = op.Gather(tokens, token_idx, axis=0)  # (n, d)
    gate_out = op.Gemm(x, gate, gate_bias, transB=1)
    hidden = op.Mul(op.Mul(gate_out, op.Sigmoid(gate_out)), op.Gemm(x, up, up_bias, transB=1))
    out = op.Gemm(hidden, down, down_bias, transB=1)  # (n, d)
    weight = op.GatherND(weights, op.Transpose(hits, perm=[1, 0]))  # (n,)
    out = op.Mul(out, op.Unsqueeze(weight, op.Constant(value_ints=[1])))
    return op.ScatterND(y, op.Unsqueeze(token_idx, op.Constant(value_ints=[1])), out, reduction="add")


def moe_ops() -> tuple[TracedOp, ...]:
    return (TracedOp(torch.ops.hybrid_export.moe_expert_add.default, moe_expert_add_onnx),)


class ExportMoE(nn.Module):
    """Wraps a `MoE` (sharing its parameters): its routing, experts as `moe_expert_add` ops."""

    def __init__(self, moe: MoE):
        super().__init__()
        self.moe = moe

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model) -> y: (B, L, d_model), aux_loss 0 (inference only)."""
        tokens = x.reshape(-1, x.shape[-1])  # (T, d)
        _, weights, chosen = self.moe.route(tokens)
        weights = weights.to(tokens.dtype)
        y = torch.zeros_like(tokens)
        for e, expert in enumerate(self.moe.experts):
            y = moe_expert_add(y, tokens, chosen, weights, e, expert.gate.weight, expert.up.weight,
                               expert.down.weight, expert.gate.bias, expert.up.bias, expert.down.bias)
        return y.view_as(x), x.new_zeros((), dtype=torch.float32)
