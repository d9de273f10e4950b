"""The ``standard`` flavour: ``hybrid::SelectiveScan`` defined in standard ONNX ops, in the model.

Both flavours trace the decoder with the scan as one opaque node (fast to trace, one
node per layer). The standard flavour then adds a model-local ONNX function with the
same domain and name, whose body is the ``chunked_export`` scan kernel
(`hybrid_mllm.plugins.mixers.scan_export`) exported on its own, once, with every axis
dynamic: one ``If`` on L == 1 (a single recurrence step), else one ``Scan`` over chunks of
16 tokens. Any ONNX runtime inlines the function, so the model needs no custom-op
library; the custom flavour is the same graph without the definition, for TensorRT plugins.

Tracing the kernel inside every layer instead re-traces its ``cond`` and ``scan`` per
layer in the exporter's decompositions (84 s for the 4-layer hybrid-tiny decoder on the
2-core dev machine, against ~30 s this way, and growing with depth); here it is traced
once per process.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from torch import Tensor, nn

from hybrid_mllm.plugins.mixers.scan_export import selective_scan_chunked_export

from .custom_ops import DOMAIN
from .graph import export_graph
from .softplus import TRANSLATIONS as SOFTPLUS_TRANSLATIONS

SCAN_OP = "SelectiveScan"
SOFTPLUS_INPUT = "softplus"


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


@functools.lru_cache(maxsize=4)
def scan_function(opset: int, dtype: torch.dtype) -> bytes:
    """The serialized FunctionProto ``hybrid::SelectiveScan`` for activations of `dtype`
    (cached: the kernel's graph does not depend on the model)."""
    g = torch.Generator().manual_seed(0)
    b, d, n, length = 2, 6, 4, 37  # all different, so no axis is mistaken for another

    def act(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    args = (act(b, d, length), act(b, d, length), -torch.rand(d, n, generator=g), act(b, n, length),
            act(b, n, length), torch.randn(d, generator=g), act(b, d, length), torch.randn(d, generator=g),
            torch.randn(b, d, n, generator=g), torch.tensor(True))
    batch, channels, states, seq = (torch.export.Dim(x) for x in ("batch", "channels", "states", "length"))
    dims = ({0: batch, 1: channels, 2: seq}, {0: batch, 1: channels, 2: seq}, {0: channels, 1: states},
            {0: batch, 1: states, 2: seq}, {0: batch, 1: states, 2: seq}, {0: channels},
            {0: batch, 1: channels, 2: seq}, {0: channels}, {0: batch, 1: channels, 2: states}, None)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state", SOFTPLUS_INPUT]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.onnx"
        export_graph(_ScanGraph(), args, path, dynamic_shapes=dims, input_names=names,
                     output_names=["y", "new_state"], opset=opset, translations=SOFTPLUS_TRANSLATIONS)
        model = onnx.load(str(path))
    return _as_function(model).SerializeToString()


def _as_function(model: onnx.ModelProto) -> onnx.FunctionProto:
    """The scan graph as a function: constants become Constant nodes, and the softplus input
    becomes the node attribute ``softplus`` (an int, as in the custom op's schema)."""
    graph = model.graph
    flag_int = f"{SOFTPLUS_INPUT}__int"
    from_attribute = helper.make_node("Constant", [], [flag_int])
    from_attribute.attribute.append(onnx.AttributeProto(name="value_int", ref_attr_name=SOFTPLUS_INPUT,
                                                        type=onnx.AttributeProto.INT))
    to_bool = helper.make_node("Cast", [flag_int], [SOFTPLUS_INPUT], to=onnx.TensorProto.BOOL)
    constants = [helper.make_node("Constant", [], [init.name], value=init) for init in graph.initializer]
    return helper.make_function(
        DOMAIN, SCAN_OP,
        inputs=[i.name for i in graph.input if i.name != SOFTPLUS_INPUT],
        outputs=[o.name for o in graph.output],
        nodes=[from_attribute, to_bool, *constants, *graph.node],
        opset_imports=list(model.opset_import),
        attributes=[SOFTPLUS_INPUT],
    )


def attach_definitions(path: Path, opset: int, dtype: torch.dtype) -> None:
    """Add the standard-op definition of ``hybrid::SelectiveScan`` to the model at `path`
    (its weights stay in their external data file)."""
    model = onnx.load(str(path), load_external_data=False)
    if not any(n.domain == DOMAIN and n.op_type == SCAN_OP for n in model.graph.node):
        return  # no Mamba layer: nothing to define
    function = onnx.FunctionProto()
    function.ParseFromString(scan_function(opset, dtype))
    model.functions.append(function)
    onnx.save(model, str(path))
