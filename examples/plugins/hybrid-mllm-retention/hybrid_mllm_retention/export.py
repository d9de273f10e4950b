"""Retention's export declaration: hybrid-mllm's ``register_exports`` hook, nothing of its internals.

- ``standard`` flavour: the mixer traces as it is (standard ops, any ONNX runtime);
- ``custom`` flavour: the retention of a call is one ``retention::Retention`` node, the op
  a TensorRT plugin (not written here) would implement. ONNX Runtime runs it on the CPU
  through `retention_numpy`, the recurrent form.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from hybrid_mllm.core.exportable import CustomNode, Exportable, TracedOp

from .retention import Retention, retain

DOMAIN, NODE = "retention", "Retention"


@torch.library.custom_op("retention::retain", mutates_args=())
def retain_op(q: Tensor, k: Tensor, v: Tensor, m: Tensor, log_gamma: Tensor, S0: Tensor) -> tuple[Tensor, Tensor]:
    """The `retention.retain` of a call as one op (shapes there)."""
    y, S = retain(q, k, v, m, log_gamma, S0)
    return y.contiguous(), S.contiguous()


@retain_op.register_fake
def _(q, k, v, m, log_gamma, S0):
    return torch.empty_like(q), torch.empty_like(S0)


class RetentionGraph(nn.Module):
    """A `Retention` (sharing its parameters) whose retention is the single op."""

    def __init__(self, retention: Retention):
        super().__init__()
        self.retention = retention

    def forward(self, x: Tensor, state=None, mask: Tensor | None = None):
        return self.retention.mix(x, state, mask, retain=torch.ops.retention.retain)


def trace(retention: Retention, flavour: str) -> nn.Module:
    return RetentionGraph(retention) if flavour == "custom" else retention


def retention_numpy(q, k, v, m, log_gamma, S0):
    """The node on numpy arrays, in the recurrent form: S_t = gamma^m_t S_{t-1} + k_t^T v_t m_t, y_t = q_t S_t."""
    S = S0.astype(np.float32).copy()  # (B, H, hd, hd)
    y = np.empty_like(q, dtype=np.float32)  # (B, H, L, hd)
    for t in range(q.shape[2]):
        m_t = m[:, None, t, None, None]  # (B, 1, 1, 1)
        S = np.exp(m_t * log_gamma[None, :, None, None]) * S + m_t * (k[:, :, t, :, None] * v[:, :, t, None, :])
        y[:, :, t] = np.einsum("bhd,bhde->bhe", q[:, :, t], S)
    return y, S


def schema():
    from onnx.defs import OpSchema

    P = OpSchema.FormalParameter
    return OpSchema(NODE, DOMAIN, 1, inputs=[P(n, "T") for n in ("q", "k", "v", "m", "log_gamma", "S0")],
                    outputs=[P("y", "T"), P("S", "T")], type_constraints=[("T", ["tensor(float)"], "float32")])


def retain_onnx(q, k, v, m, log_gamma, S0):
    import onnxscript

    return onnxscript.values.Opset(DOMAIN, 1).Retention(q, k, v, m, log_gamma, S0)


def ops() -> tuple[TracedOp, ...]:
    node = CustomNode(DOMAIN, NODE, schema, cpu=retention_numpy)
    return (TracedOp(torch.ops.retention.retain.default, retain_onnx, node),)


RETENTION_EXPORT = Exportable(trace=trace, ops=ops, description="custom flavour: retention::Retention")
