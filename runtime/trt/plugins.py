"""The TensorRT plugins of the registered components' custom nodes (their export declarations)."""

from __future__ import annotations

from hybrid_mllm.core.exportable import CustomNode, custom_nodes
from hybrid_mllm.core.registry import get_registry

from .errors import import_tensorrt


def plugin_nodes() -> dict[str, CustomNode]:
    """Every declared custom node with a TensorRT plugin, by ``domain::name`` (no TensorRT needed)."""
    nodes = custom_nodes(e.obj for e in get_registry().entries("export"))
    return {node_id: node for node_id, node in nodes.items() if node.tensorrt is not None}


def register_plugins() -> list[str]:
    """Register those plugins with TensorRT (each once per process); returns their ids. Needed
    to build engines, and to run engines built with Python (jit) plugins."""
    import_tensorrt()
    nodes = plugin_nodes()
    for node in nodes.values():
        node.tensorrt()
    return sorted(nodes)
