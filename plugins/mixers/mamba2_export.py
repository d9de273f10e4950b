"""Mamba-2's export declaration (the ``register_exports`` hook): what it traces to in each flavour.

- the SSD scan becomes one ``hybrid::SSDScan`` node in both flavours; the standard flavour
  defines that node in standard ops (`ssd_ops_onnx.ssd_body`), so any ONNX runtime runs it;
- in the ``custom`` flavour the causal conv1d over xBC becomes Mamba-1's ``hybrid::CausalConv1d``
  node (`ops`; the same op, plugin and CPU implementation); the standard flavour keeps it as
  the slices and adds it already is.

For ONNX Runtime's CPU provider both nodes have Python implementations (`ssd_ops_cpu`,
`ops_cpu`); for TensorRT, plugins (`ssd_trt`, `ops_trt`). The state layout is Mamba-2's
``state_specs``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrid_mllm.core.exportable import CustomNode, Exportable, TracedOp

from .conv import causal_conv1d
from .mamba2 import Mamba2
from .ops import conv_via_op
from .ssd_ops_torch import ssd_via_op


class Mamba2Graph(nn.Module):
    """A `Mamba2` (sharing its parameters) whose scan, and in the custom flavour conv, are single ops."""

    def __init__(self, mamba2: Mamba2, flavour: str):
        super().__init__()
        self.mamba2 = mamba2
        self.conv = conv_via_op if flavour == "custom" else causal_conv1d

    def forward(self, x: Tensor, state=None, mask: Tensor | None = None):
        """x: (B, L, d_model), mask: (B, L) -> y: (B, L, d_model), (conv_state, ssm_state)."""
        return self.mamba2.mix(x, state, mask, conv=self.conv, scan=ssd_via_op)


def mamba2_ops() -> tuple[TracedOp, ...]:
    """The SSD op and the conv op, and their nodes (imports onnx and onnxscript)."""
    from . import ops_cpu, ops_onnx, ops_trt, ssd_ops_cpu, ssd_ops_onnx, ssd_trt

    ssd = CustomNode(ops_onnx.DOMAIN, ssd_ops_onnx.SSD_NODE, ssd_ops_onnx.ssd_schema, body=ssd_ops_onnx.ssd_body,
                     cpu=ssd_ops_cpu.ssd_scan, tensorrt=ssd_trt.register_ssd_plugin)
    conv = CustomNode(ops_onnx.DOMAIN, ops_onnx.CONV_NODE, ops_onnx.conv_schema,
                      cpu=ops_cpu.causal_conv1d, tensorrt=ops_trt.register_conv_plugin)
    return (TracedOp(torch.ops.hybrid.ssd_scan.default, ssd_ops_onnx.ssd_scan_onnx, ssd),
            TracedOp(torch.ops.hybrid.causal_conv1d.default, ops_onnx.causal_conv1d_onnx, conv))


MAMBA2_EXPORT = Exportable(trace=Mamba2Graph, ops=mamba2_ops,
                           description="SSD scan: hybrid::SSDScan (standard: defined in standard ops); "
                                       "custom flavour: conv: hybrid::CausalConv1d")
