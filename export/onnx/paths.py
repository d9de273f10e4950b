"""What the model runs while it is traced for export, switched explicitly and restored after.

Each module whose class has an export declaration (`hybrid_mllm.core.exportable`, the
``register_exports`` hook) is replaced, for the trace, by the module its declaration gives
for the flavour; the translation table maps every op those modules may hold to its ONNX
translation. For the ``standard`` flavour (ONNX Runtime), softplus also becomes ops its CPU
kernels run fast (see `softplus`). Nothing here knows a component: it asks the registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import onnx
from torch import nn

from hybrid_mllm.core.exportable import FLAVOURS, Exportable
from hybrid_mllm.core.registry import Registry, get_registry

from .softplus import TRANSLATIONS as SOFTPLUS_TRANSLATIONS


@contextmanager
def export_paths(model: nn.Module, flavour: str, registry: Registry | None = None) -> Iterator[dict]:
    """Switch `model` to the export path of `flavour`; yields the exporter's custom translation table."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    registry = registry or get_registry()
    swaps = list(_declared(model, registry))
    try:
        for parent, name, child, exportable in swaps:
            setattr(parent, name, exportable.trace(child, flavour))
        yield translations([e for *_, e in swaps], flavour)
    finally:
        for parent, name, child, _ in swaps:
            setattr(parent, name, child)


def translations(exportables: list[Exportable], flavour: str) -> dict:
    """torch op -> onnxscript function, for every op the declarations list (their custom node
    schemas registered with onnx), plus softplus in the standard flavour."""
    table = dict(SOFTPLUS_TRANSLATIONS) if flavour == "standard" else {}
    for exportable in dict.fromkeys(exportables):
        for traced in exportable.ops():
            table[traced.op] = traced.onnx
            if traced.node is not None:
                register_schema(traced.node.schema())
    return table


def register_schema(schema) -> None:
    """Declare a custom node type to onnx (once per process), so onnxscript can emit it."""
    if not onnx.defs.has(schema.name, schema.domain):
        onnx.defs.register_schema(schema)


def _declared(module: nn.Module, registry: Registry) -> Iterator[tuple[nn.Module, str, nn.Module, Exportable]]:
    """(parent, attribute, child, declaration) for each outermost submodule with a declaration."""
    for name, child in module.named_children():
        exportable = registry.export_of(child)
        if exportable is not None:
            yield module, name, child, exportable
        else:
            yield from _declared(child, registry)
