"""Mamba's export declaration (the ``register_exports`` hook): what it traces to in each flavour.

- the scan becomes one ``hybrid::SelectiveScan`` node in both flavours; the standard flavour
  defines that node in standard ops (`ops_onnx.scan_body`), so any ONNX runtime runs it;
- in the ``custom`` flavour the causal conv1d becomes one ``hybrid::CausalConv1d`` node too
  (the standard flavour keeps it as the slices and adds it already is).

For ONNX Runtime's CPU provider both nodes have Python implementations (`ops_cpu`); for
TensorRT, plugins (`ops_trt`). The state layout is Mamba's ``state_specs``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrid_mllm.core.exportable import CustomNode, Exportable, TracedOp

from .conv import causal_conv1d
from .mamba import Mamba
from .ops import conv_via_op, scan_via_op


class MambaGraph(nn.Module):
    """A `Mamba` (sharing its parameters) whose scan, and in the custom flavour conv, are single ops."""

    def __init__(self, mamba: Mamba, flavour: str):
        super().__init__()
        self.mamba = mamba
        self.conv = conv_via_op if flavour == "custom" else causal_conv1d

    def forward(self, x: Tensor, state=None, mask: Tensor | None = None):
        """x: (B, L, d_model), mask: (B, L) -> y: (B, L, d_model), (conv_state, ssm_state)."""
        return self.mamba.mix(x, state, mask, conv=self.conv, scan=scan_via_op)


def mamba_ops() -> tuple[TracedOp, ...]:
    """The two ops and their nodes (imports onnx and onnxscript)."""
    from . import ops_cpu, ops_onnx, ops_trt

    scan = CustomNode(ops_onnx.DOMAIN, ops_onnx.SCAN_NODE, ops_onnx.scan_schema, body=ops_onnx.scan_body,
                      cpu=ops_cpu.selective_scan, tensorrt=ops_trt.register_scan_plugin)
    conv = CustomNode(ops_onnx.DOMAIN, ops_onnx.CONV_NODE, ops_onnx.conv_schema,
                      cpu=ops_cpu.causal_conv1d, tensorrt=ops_trt.register_conv_plugin)
    return (TracedOp(torch.ops.hybrid.selective_scan.default, ops_onnx.selective_scan_onnx, scan),
            TracedOp(torch.ops.hybrid.causal_conv1d.default, ops_onnx.causal_conv1d_onnx, conv))


MAMBA_EXPORT = Exportable(trace=MambaGraph, ops=mamba_ops,
                          description="scan: hybrid::SelectiveScan (standard: defined in standard ops); "
                                      "custom flavour: conv: hybrid::CausalConv1d")
