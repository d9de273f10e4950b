"""Shape and type rules of the two custom nodes, in plain Python (no TensorRT import).

One description per node (`SCAN`, `CONV`, matching `ops`):
its inputs and outputs, each output's dims as (input, axis) picks, the dims that must
agree, and which tensors follow the activation type ``T`` and which are always float32.
`output_shapes` works on any dim objects (ints, axis names, TensorRT's ``ShapeExpr``),
so the TensorRT plugins' shape functions (`ops_trt`) and the CPU tests use the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hybrid_mllm.core.errors import HybridError

ACT, F32 = "T", "float32"  # an I/O tensor's type: the activation type, or always float32
# TensorRT autotune names of the activation types the kernels are compiled for, in order.
ACTIVATION_TYPES = ("FP32", "FP16", "BF16")


class PluginShapeError(HybridError):
    """Inputs of a custom node that do not fit together."""


@dataclass(frozen=True)
class OpSpec:
    """One custom node type.

    output_dims: per output, its dims as (input name, axis) picks.
    equal: groups of (input name, axis, offset) whose dim + offset must be equal.
    types: the type class (ACT or F32) of each input, then each output.
    """

    name: str
    inputs: tuple[str, ...]
    ranks: tuple[int, ...]
    outputs: tuple[str, ...]
    output_dims: tuple[tuple[tuple[str, int], ...], ...]
    equal: tuple[tuple[tuple[str, int, int], ...], ...]
    types: tuple[str, ...]
    attributes: tuple[str, ...] = ()

    def index(self, name: str) -> int:
        return self.inputs.index(name)


SCAN = OpSpec(
    name="SelectiveScan",
    inputs=("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state"),
    ranks=(3, 3, 2, 3, 3, 1, 3, 1, 3),
    outputs=("y", "new_state"),
    output_dims=((("u", 0), ("u", 1), ("u", 2)), (("u", 0), ("u", 1), ("A", 1))),
    equal=(
        (("u", 0, 0), ("delta", 0, 0), ("B", 0, 0), ("C", 0, 0), ("z", 0, 0), ("state", 0, 0)),  # batch
        (("u", 1, 0), ("delta", 1, 0), ("A", 0, 0), ("D", 0, 0), ("z", 1, 0), ("delta_bias", 0, 0),
         ("state", 1, 0)),  # channels D
        (("u", 2, 0), ("delta", 2, 0), ("B", 2, 0), ("C", 2, 0), ("z", 2, 0)),  # length L
        (("A", 1, 0), ("B", 1, 0), ("C", 1, 0), ("state", 2, 0)),  # d_state N
    ),
    # delta is float32: Mamba computes softplus(dt) in float32 before the scan.
    types=(ACT, F32, F32, ACT, ACT, F32, ACT, F32, F32, ACT, F32),
    attributes=("softplus",),
)

CONV = OpSpec(
    name="CausalConv1d",
    inputs=("x", "weight", "bias", "conv_state"),
    ranks=(3, 2, 1, 3),
    outputs=("y", "new_conv_state"),
    output_dims=((("x", 0), ("x", 1), ("x", 2)), (("x", 0), ("x", 1), ("conv_state", 2))),
    equal=(
        (("x", 0, 0), ("conv_state", 0, 0)),
        (("x", 1, 0), ("weight", 0, 0), ("bias", 0, 0), ("conv_state", 1, 0)),
        (("weight", 1, -1), ("conv_state", 2, 0)),  # the state holds the last K - 1 inputs
    ),
    types=(ACT,) * 6,
)

OPS = {spec.name: spec for spec in (SCAN, CONV)}


def _by_name(spec: OpSpec, shapes: Mapping[str, Sequence] | Sequence[Sequence]) -> Mapping[str, Sequence]:
    if isinstance(shapes, Mapping):
        return shapes
    if len(shapes) != len(spec.inputs):
        raise PluginShapeError(f"hybrid::{spec.name} takes {len(spec.inputs)} inputs "
                               f"({', '.join(spec.inputs)}), got {len(shapes)}")
    return dict(zip(spec.inputs, shapes))


def output_shapes(spec: OpSpec, shapes) -> tuple[tuple, ...]:
    """The outputs' shapes, picked from the inputs' dims (any dim objects), in output order."""
    named = _by_name(spec, shapes)
    return tuple(tuple(named[name][axis] for name, axis in dims) for dims in spec.output_dims)


def check_shapes(spec: OpSpec, shapes) -> None:
    """Ranks and agreeing dims of concrete or named shapes; raises `PluginShapeError` naming
    every mismatch. Dims that are names compare as names; a name with an offset is skipped."""
    named = _by_name(spec, shapes)
    problems = [f"{name} has rank {len(named[name])}, expected {rank}"
                for name, rank in zip(spec.inputs, spec.ranks) if len(named[name]) != rank]
    if problems:
        raise PluginShapeError(f"hybrid::{spec.name}: " + "; ".join(problems))
    for group in spec.equal:
        values = {}
        for name, axis, offset in group:
            dim = named[name][axis]
            if isinstance(dim, int):
                values[f"{name}[{axis}]{f' {offset:+d}' if offset else ''}"] = dim + offset
            elif not offset:
                values[f"{name}[{axis}]"] = dim
        if len(set(map(str, values.values()))) > 1:
            problems.append(", ".join(f"{k} = {v}" for k, v in values.items()) + " must agree")
    if problems:
        raise PluginShapeError(f"hybrid::{spec.name}: " + "; ".join(problems))


def output_types(spec: OpSpec, input_types: Sequence) -> tuple:
    """Each output's type: the activation type (that of the first ACT input) or float32.
    `input_types` are any type objects; float32 is returned as the string ``"float32"``
    unless it appears among the inputs' F32 slots, in which case that object is reused."""
    act = next(t for t, kind in zip(input_types, spec.types) if kind == ACT)
    f32 = next((t for t, kind in zip(input_types, spec.types) if kind == F32), F32)
    return tuple(act if kind == ACT else f32 for kind in spec.types[len(spec.inputs):])


def autotune_types(spec: OpSpec, activation_types: Sequence[str] = ACTIVATION_TYPES) -> str:
    """The TensorRT ``AutoTuneCombination`` type string: one comma-separated entry per input
    then output; ``A|B|C`` alternatives are taken together by position (all FP16, ...)."""
    act = "|".join(activation_types)
    return ", ".join(act if kind == ACT else "FP32" for kind in spec.types)
