"""The standard flavour's custom nodes, defined in standard ONNX ops inside the model.

Both flavours trace a declared op as one opaque node (fast to trace, one node per layer).
The standard flavour then adds, for each node type with a standard-op body
(`hybrid_mllm.core.exportable.CustomNode.body`), a model-local ONNX function with the
node's domain and name: the body traced on its own, once per process, with every axis
dynamic. Any ONNX runtime inlines the function, so the model needs no custom-op library;
the custom flavour is the same graph without the definitions, for TensorRT plugins.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import onnx
import torch
from onnx import helper

from hybrid_mllm.core.exportable import CustomNode

from .errors import ExportError
from .graph import export_graph
from .softplus import TRANSLATIONS as SOFTPLUS_TRANSLATIONS


@functools.lru_cache(maxsize=16)
def node_function(node: CustomNode, opset: int, dtype: torch.dtype) -> bytes:
    """The serialized FunctionProto defining `node` for activations of `dtype` (cached: a
    node's body does not depend on the model)."""
    body = node.body(opset, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "body.onnx"
        export_graph(body.module, body.args, path, dynamic_shapes=body.dynamic_shapes, input_names=body.input_names,
                     output_names=body.output_names, opset=opset, translations=SOFTPLUS_TRANSLATIONS)
        model = onnx.load(str(path))
    return as_function(model, node.domain, node.name, body.attributes).SerializeToString()


def as_function(model: onnx.ModelProto, domain: str, name: str, attributes: tuple[str, ...]) -> onnx.FunctionProto:
    """A traced graph as the function ``domain::name``: initializers become Constant nodes, and
    each input named in `attributes` becomes the int node attribute of that name (cast to the
    input's type)."""
    graph = model.graph
    types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    from_attributes = []
    for attribute in attributes:
        as_int = f"{attribute}__int"
        constant = helper.make_node("Constant", [], [as_int])
        constant.attribute.append(onnx.AttributeProto(name="value_int", ref_attr_name=attribute,
                                                      type=onnx.AttributeProto.INT))
        from_attributes += [constant, helper.make_node("Cast", [as_int], [attribute], to=types[attribute])]
    constants = [helper.make_node("Constant", [], [init.name], value=init) for init in graph.initializer]
    for node in graph.node:
        _drop_shape_annotations(node)
    return helper.make_function(
        domain, name,
        inputs=[i.name for i in graph.input if i.name not in attributes],
        outputs=[o.name for o in graph.output],
        nodes=[*from_attributes, *constants, *graph.node],
        opset_imports=list(model.opset_import),
        attributes=list(attributes),
    )


def _drop_shape_annotations(node: onnx.NodeProto) -> None:
    """Clear the inferred shapes (value_info) of the node's subgraphs (If / Scan branches), recursively.
    Inlined into a model, a function's subgraphs keep their value names, which can be names of the
    caller's values too (``view``), and a runtime then checks the caller's shape against the
    annotation; the runtime infers the shapes again anyway."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            del attribute.g.value_info[:]
            for inner in attribute.g.node:
                _drop_shape_annotations(inner)


def attach_definitions(path: Path, nodes: dict[str, CustomNode], opset: int, dtype: torch.dtype) -> None:
    """Add the standard-op definition of every declared custom node type the model at `path`
    holds (its weights stay in their external data file); a node without one is an `ExportError`."""
    model = onnx.load(str(path), load_external_data=False)
    present = dict.fromkeys(f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain in _domains(nodes))
    if not present:
        return
    for node_id in present:
        node = nodes[node_id]
        if node.body is None:
            raise ExportError(f"the standard flavour holds a {node_id} node, which has no standard-op body in its "
                              "export declaration: export with --scan custom, or give the node a body")
        function = onnx.FunctionProto()
        function.ParseFromString(node_function(node, opset, dtype))
        model.functions.append(function)
    onnx.save(model, str(path))


def _domains(nodes: dict[str, CustomNode]) -> set[str]:
    return {node.domain for node in nodes.values()}
