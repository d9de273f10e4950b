"""The ONNX side of Mamba's ops (`ops`): node schemas, translations, and the scan's standard-op body.

The dynamo exporter maps each op to its node through the translations below; the schemas
declare the two node types to onnx (once per process) so onnxscript knows their outputs.

In the standard flavour the ``SelectiveScan`` node stays and is defined by a model-local
ONNX function (`scan_body`): the ``chunked_export`` scan kernel (`scan_export`) traced on
its own, once, with every axis dynamic: one ``If`` on L == 1 (a single recurrence step),
else one ``Scan`` over chunks of 16 tokens. Any ONNX runtime inlines the function, so the
model needs no custom-op library. Tracing the kernel inside every layer instead re-traces
its ``cond`` and ``scan`` per layer in the exporter's decompositions (84 s for the 4-layer
hybrid-tiny decoder on the 2-core dev machine, against ~30 s this way, and growing with depth).
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
import torch.nn.functional as F
from onnx.defs import OpSchema
from torch import Tensor, nn

from hybrid_mllm.core.exportable import StandardBody

from .scan_export import selective_scan_chunked_export

DOMAIN, VERSION = "hybrid", 1
SCAN_NODE, CONV_NODE = "SelectiveScan", "CausalConv1d"
FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def scan_schema() -> OpSchema:
    P = OpSchema.FormalParameter
    return OpSchema(SCAN_NODE, DOMAIN, VERSION,
                    inputs=[P("u", "T"), P("delta", "TD"), P("A", "F"), P("B", "T"), P("C", "T"), P("D", "F"),
                            P("z", "T"), P("delta_bias", "F"), P("state", "F")],
                    outputs=[P("y", "T"), P("new_state", "F")],
                    type_constraints=[("T", FLOAT_TYPES, "activations"),
                                      ("TD", FLOAT_TYPES, "delta (Mamba passes it in float32)"),
                                      ("F", ["tensor(float)"], "float32 parameters")],
                    attributes=[OpSchema.Attribute("softplus", OpSchema.AttrType.INT, "softplus on delta + delta_bias")])


def conv_schema() -> OpSchema:
    P = OpSchema.FormalParameter
    return OpSchema(CONV_NODE, DOMAIN, VERSION,
                    inputs=[P("x", "T"), P("weight", "T"), P("bias", "T"), P("conv_state", "T")],
                    outputs=[P("y", "T"), P("new_conv_state", "T")],
                    type_constraints=[("T", FLOAT_TYPES, "activations and weights")])


def register_schemas() -> None:
    """Declare both node types to onnx (once per process): onnxscript emits only known ops."""
    for schema in (scan_schema(), conv_schema()):
        if not onnx.defs.has(schema.name, DOMAIN):
            onnx.defs.register_schema(schema)


register_schemas()
_opset = onnxscript.values.Opset(DOMAIN, VERSION)


def selective_scan_onnx(u, delta, A, B, C, D, z, delta_bias, state, softplus: bool):
    return _opset.SelectiveScan(u, delta, A, B, C, D, z, delta_bias, state, softplus=int(softplus))


def causal_conv1d_onnx(x, weight, bias, conv_state):
    return _opset.CausalConv1d(x, weight, bias, conv_state)


class _ScanGraph(nn.Module):
    """The SelectiveScan node's inputs -> the chunked_export kernel, softplus as a bool tensor."""

    def forward(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
                delta_bias: Tensor, state: Tensor, softplus: Tensor) -> tuple[Tensor, Tensor]:
        delta = delta.float() + delta_bias[:, None]
        # an If, not a Where: only the branch the node's attribute picks is computed
        delta = torch.cond(softplus, _softplus, _unchanged, (delta,))
        return selective_scan_chunked_export(u, delta, A, B, C, D, z, None, False, state)


def _softplus(delta: Tensor) -> Tensor:
    return F.softplus(delta)


def _unchanged(delta: Tensor) -> Tensor:
    return delta.clone()


def scan_body(opset: int, dtype: torch.dtype) -> StandardBody:
    """``hybrid::SelectiveScan`` in standard ops for activations of `dtype`, traced on example
    inputs whose sizes all differ, so no axis is mistaken for another."""
    g = torch.Generator().manual_seed(0)
    b, d, n, length = 2, 6, 4, 37

    def act(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    args = (act(b, d, length), act(b, d, length), -torch.rand(d, n, generator=g), act(b, n, length),
            act(b, n, length), torch.randn(d, generator=g), act(b, d, length), torch.randn(d, generator=g),
            torch.randn(b, d, n, generator=g), torch.tensor(True))
    batch, channels, states, seq = (torch.export.Dim(x) for x in ("batch", "channels", "states", "length"))
    dims = ({0: batch, 1: channels, 2: seq}, {0: batch, 1: channels, 2: seq}, {0: channels, 1: states},
            {0: batch, 1: states, 2: seq}, {0: batch, 1: states, 2: seq}, {0: channels},
            {0: batch, 1: channels, 2: seq}, {0: channels}, {0: batch, 1: channels, 2: states}, None)
    return StandardBody(_ScanGraph(), args, dims,
                        input_names=("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state", "softplus"),
                        output_names=("y", "new_state"), attributes=("softplus",))
