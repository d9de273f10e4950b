"""How a component exports: what it declares through the ``register_exports`` hook.

A mixer or FFN traces to ONNX as it is whenever its forward is standard PyTorch ops with no
Python branch on the data. Where it is not (a fused kernel, a data-dependent routing) or where
a runtime should see one node (a TensorRT plugin), the component declares an `Exportable`:

- ``trace(module, flavour)`` gives the module to trace in place of `module` (sharing its
  parameters; `module` itself when nothing changes). Flavours: ``standard`` (standard ONNX
  ops only: runs in any ONNX runtime) and ``custom`` (custom nodes for TensorRT plugins);
- ``ops()`` lists the `torch.library` ops that traced module may call, each with its ONNX
  translation (an onnxscript function) and, when the translation writes a custom node, that
  node's `CustomNode`: its ONNX schema, its body in standard ops (the standard flavour keeps
  the node and defines it as a model-local function), its implementation for ONNX Runtime's
  CPU (onnxruntime-extensions, numpy in and out) and its TensorRT plugin.

``ops`` is called only by export and by runtimes that load custom nodes, so it may import
onnx, onnxscript or tensorrt; ``trace`` runs under torch.export. The state layout of a
mixer is its ``state_specs`` (`hybrid_mllm.core.mixer.StateSpec`). `export/` knows no
component: it asks the registry (`Registry.export_of`) and uses these declarations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

FLAVOURS = ("standard", "custom")


@dataclass(frozen=True)
class StandardBody:
    """A custom node's definition in standard ops, as a module torch.export traces once.

    Inputs named in `attributes` become the node's int attributes (a 0-d tensor input of
    the module: bool or int). `dynamic_shapes` as for `torch.export.export`.
    """

    module: nn.Module
    args: tuple
    dynamic_shapes: tuple
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CustomNode:
    """One ``domain::name`` node type of the custom flavour.

    schema: () -> ``onnx.defs.OpSchema`` (registered with onnx before export)
    body: (opset, activation dtype) -> `StandardBody`, or None when the standard flavour never
        holds this node (the component traces to standard ops there)
    cpu: ``(*inputs, **attributes) -> outputs`` on numpy arrays, for ONNX Runtime's CPU
        provider (onnxruntime-extensions Python ops), or None
    tensorrt: () -> None, registers the node's TensorRT plugin (``tensorrt.plugin``, the
        plugin name ``domain::name``), or None when no TensorRT plugin exists
    """

    domain: str
    name: str
    schema: Callable[[], Any]
    body: Callable[[int, Any], StandardBody] | None = None
    cpu: Callable[..., tuple] | None = None
    tensorrt: Callable[[], None] | None = None

    @property
    def id(self) -> str:
        return f"{self.domain}::{self.name}"


@dataclass(frozen=True)
class TracedOp:
    """A `torch.library` op the traced graph may hold, and its ONNX translation.

    op: the op overload (``torch.ops.ns.name.default``); onnx: the onnxscript function with
    the op's signature; node: the custom node it writes, None when it writes standard ops.
    """

    op: Any
    onnx: Callable
    node: CustomNode | None = None


@dataclass(frozen=True)
class Exportable:
    """A component class's export declaration (see the module doc); `description`: one line
    for ``hybrid-plugins``."""

    trace: Callable[[nn.Module, str], nn.Module]
    ops: Callable[[], tuple[TracedOp, ...]] = field(default=tuple)
    description: str = ""


def custom_nodes(exportables: Iterable[Exportable]) -> dict[str, CustomNode]:
    """Every custom node the declarations can write, by ``domain::name``."""
    return {op.node.id: op.node for e in exportables for op in e.ops() if op.node is not None}
