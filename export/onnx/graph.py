"""One module -> one ONNX file: torch.export, then the dynamo ONNX exporter, weights as external data.

torch.export is called here, not inside torch.onnx.export: given a module, the ONNX
exporter falls back to other capture strategies when torch.export fails, and a fallback
can return a graph with a silently specialised axis. Given an ExportedProgram it cannot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
import torch.fx.experimental._config as fx_config
from torch import nn

from .errors import ExportError, first_line

DATA_SUFFIX = ".data"  # model.onnx -> model.onnx.data


def export_graph(module: nn.Module, args: tuple, path: Path, *, dynamic_shapes, input_names: Sequence[str],
                 output_names: Sequence[str], opset: int, translations: dict, verbose: bool = False) -> None:
    """Trace `module` on `args` with `dynamic_shapes` (per input, nested like `args`; each
    `torch.export.Dim`'s name becomes the ONNX axis name) and write `path` + its external data."""
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):  # 0/1-sized examples stay symbolic
        try:
            program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as e:
            if verbose:
                raise
            raise ExportError(f"torch.export could not trace {type(module).__name__}: {first_line(e)} "
                              "(rerun with --verbose for the full report)") from None
    try:
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=list(input_names),
                                         output_names=list(output_names), custom_translation_table=translations,
                                         optimize=True, verbose=verbose)
    except Exception as e:
        if verbose:
            raise
        raise ExportError(f"the ONNX exporter failed on {type(module).__name__}: {first_line(e)} "
                          "(rerun with --verbose for the full report)") from None
    onnx_program.save(str(path), external_data=True)
    _name_axes(path, dict(zip(input_names, _flatten(dynamic_shapes))))


def _flatten(dynamic_shapes) -> list:
    """Per-input specs in input order: dicts (axis -> Dim) or None, unnested from tuples."""
    if isinstance(dynamic_shapes, (tuple, list)):
        return [leaf for item in dynamic_shapes for leaf in _flatten(item)]
    return [dynamic_shapes]


def _name_axes(path: Path, specs: dict[str, dict | None]) -> None:
    """Rename the exporter's symbols (s0, s1, ...) to our Dim names everywhere in the graph,
    found from where they sit on the inputs (the weights in external data are untouched)."""
    model = onnx.load(str(path), load_external_data=False)
    inputs = {i.name: i for i in model.graph.input}
    mapping = {}
    for name, spec in specs.items():
        for axis, dim in (spec or {}).items():
            old = inputs[name].type.tensor_type.shape.dim[axis].dim_param
            if old:
                mapping[old] = dim.__name__
    if not mapping:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, mapping)) + r")\b")
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: mapping[m.group(1)], dim.dim_param)
    onnx.save(model, str(path))


def dim_names(path: Path) -> dict:
    """The graph's inputs and outputs: name, shape (ints and axis names), numpy dtype name."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(value) -> dict:
        t = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": value.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [describe(v) for v in model.graph.input], "outputs": [describe(v) for v in model.graph.output]}
