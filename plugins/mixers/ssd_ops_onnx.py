"""The ONNX side of the SSD op (`ssd_ops_torch`): the node's schema, its translation, and its standard-op body.

The dynamo exporter maps ``hybrid::ssd_scan`` to one ``hybrid::SSDScan`` node in both flavours.
In the standard flavour the node stays and is defined by a model-local ONNX function: the
export kernel (`ssd_export`) traced on its own, once, with every axis dynamic, so any ONNX
runtime runs the model without a custom-op library (as Mamba-1's ``SelectiveScan``, `ops_onnx`).
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema
from torch import Tensor, nn

from hybrid_mllm.core.exportable import StandardBody

from .ops_onnx import DOMAIN, FLOAT_TYPES, VERSION
from .ssd_export import ssd_scan_export

SSD_NODE = "SSDScan"
INPUTS = ("x", "dt", "A", "B", "C", "D", "state")
OUTPUTS = ("y", "new_state")


def ssd_schema() -> OpSchema:
    P = OpSchema.FormalParameter
    types = {"x": "T", "B": "T", "C": "T", "y": "T"}
    return OpSchema(SSD_NODE, DOMAIN, VERSION,
                    inputs=[P(name, types.get(name, "F")) for name in INPUTS],
                    outputs=[P(name, types.get(name, "F")) for name in OUTPUTS],
                    type_constraints=[("T", FLOAT_TYPES, "activations"),
                                      ("F", ["tensor(float)"], "dt, parameters and state, float32")])


if not onnx.defs.has(SSD_NODE, DOMAIN):  # declare the node to onnx once: onnxscript emits only known ops
    onnx.defs.register_schema(ssd_schema())
_opset = onnxscript.values.Opset(DOMAIN, VERSION)


def ssd_scan_onnx(x, dt, A, B, C, D, state):
    return _opset.SSDScan(x, dt, A, B, C, D, state)


class _SSDGraph(nn.Module):
    """The SSDScan node's inputs -> the export kernel."""

    def forward(self, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                state: Tensor) -> tuple[Tensor, Tensor]:
        return ssd_scan_export(x, dt, A, B, C, D, state)


def ssd_body(opset: int, dtype: torch.dtype) -> StandardBody:
    """``hybrid::SSDScan`` in standard ops for activations of `dtype`, traced on example inputs
    whose sizes all differ (2 groups of 2 heads), so no axis is mistaken for another."""
    g = torch.Generator().manual_seed(0)
    b, length, nheads, headdim, ngroups, d_state = 2, 150, 6, 3, 2, 5

    def act(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    args = (act(b, length, nheads, headdim), torch.rand(b, length, nheads, generator=g), -torch.rand(nheads, generator=g),
            act(b, length, ngroups, d_state), act(b, length, ngroups, d_state), torch.randn(nheads, generator=g),
            torch.randn(b, nheads, headdim, d_state, generator=g))
    batch, seq, heads, dim, groups, states = (torch.export.Dim(n) for n in
                                              ("batch", "length", "heads", "headdim", "groups", "states"))
    dims = ({0: batch, 1: seq, 2: heads, 3: dim}, {0: batch, 1: seq, 2: heads}, {0: heads},
            {0: batch, 1: seq, 2: groups, 3: states}, {0: batch, 1: seq, 2: groups, 3: states}, {0: heads},
            {0: batch, 1: heads, 2: dim, 3: states})
    return StandardBody(_SSDGraph(), args, dims, input_names=INPUTS, output_names=OUTPUTS)
