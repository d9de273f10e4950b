"""The ``custom`` flavour: the scan and the conv as single ONNX nodes for TensorRT plugins.

``hybrid::SelectiveScan`` (domain ``hybrid``, version 1)
    inputs  u (B, D, L), delta (B, D, L) any float type, A (D, N) f32, B (B, N, L), C (B, N, L), D (D,) f32,
            z (B, D, L), delta_bias (D,) f32, state (B, D, N) f32
    outputs y (B, D, L) in u's type, new_state (B, D, N) f32
    attribute softplus (int): delta' = softplus(delta + delta_bias) when 1, delta + delta_bias when 0;
    h_t = exp(delta'_t A) h_{t-1} + delta'_t B_t u_t,  y_t = (C_t . h_t + D u_t) * silu(z_t).
``hybrid::CausalConv1d``
    inputs  x (B, D, L), weight (D, K), bias (D,), conv_state (B, D, K-1)
    outputs y (B, D, L), new_conv_state (B, D, K-1) = the last K-1 inputs of cat(conv_state, x)
    y_t = bias + sum_k weight[:, k] * cat(conv_state, x)[:, t + k].

Every input is present (zeros stand for a missing bias or skip), so a plugin has one
fixed signature. The ops are `torch.library.custom_op`s with fake implementations; the
dynamo exporter maps them to these nodes through its ``custom_translation_table``, and
the ONNX schemas are registered so onnxscript knows their outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema
from torch import Tensor

from hybrid_mllm.core import registry as registry_module
from hybrid_mllm.core.hookspecs import hookimpl
from hybrid_mllm.core.scan import ScanKernel
from hybrid_mllm.core.scan import selective_scan as dispatch_scan
from hybrid_mllm.plugins.mixers import conv

DOMAIN, VERSION = "hybrid", 1
KERNEL_NAME = "onnx_custom"
MAMBA_MODULE = "hybrid_mllm.plugins.mixers.mamba"


@torch.library.custom_op("hybrid::selective_scan", mutates_args=())
def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
                      delta_bias: Tensor, state: Tensor, softplus: bool) -> tuple[Tensor, Tensor]:
    """Eager: the project's best scan kernel. Shapes in the module docstring."""
    y, new_state = dispatch_scan(u, delta, A, B, C, D, z, delta_bias, softplus, state)
    return _time_major(y), new_state


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, state, softplus):
    return _time_major_empty(u), state.new_empty(state.shape, dtype=torch.float32)


@torch.library.custom_op("hybrid::causal_conv1d", mutates_args=())
def causal_conv1d_op(x: Tensor, weight: Tensor, bias: Tensor, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """Eager: the project's causal conv. Shapes in the module docstring."""
    y, new_state = conv.causal_conv1d(x, weight, bias, conv_state)
    return _time_major(y), new_state.clone()  # a custom op may not return a view of its input


@causal_conv1d_op.register_fake
def _(x, weight, bias, conv_state):
    return _time_major_empty(x), x.new_empty(conv_state.shape)


def _time_major(t: Tensor) -> Tensor:
    """(B, D, L) stored as (B, L, D), the layout Mamba's projections produce and consume:
    with a plain (B, D, L) layout, the next ``transpose(1, 2)`` + Linear makes torch.export
    guard on L != 1 (whether the transpose is a contiguous view)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _time_major_empty(like: Tensor) -> Tensor:
    """An uninitialised (B, D, L) tensor in `_time_major` layout (for the fake implementations)."""
    batch, channels, length = like.shape
    return like.new_empty(batch, length, channels).transpose(1, 2)


def _register_schemas() -> None:
    """Declare the two node types to ONNX (once per process) so onnxscript can emit them."""
    P, T, TD, F = OpSchema.FormalParameter, "T", "TD", "F"
    float_types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    schemas = [
        OpSchema("SelectiveScan", DOMAIN, VERSION,
                 inputs=[P("u", T), P("delta", TD), P("A", F), P("B", T), P("C", T), P("D", F), P("z", T),
                         P("delta_bias", F), P("state", F)],
                 outputs=[P("y", T), P("new_state", F)],
                 type_constraints=[(T, float_types, "activations"),
                                   (TD, float_types, "delta (Mamba passes it in float32)"),
                                   (F, ["tensor(float)"], "float32 parameters")],
                 attributes=[OpSchema.Attribute("softplus", OpSchema.AttrType.INT, "softplus on delta + delta_bias")]),
        OpSchema("CausalConv1d", DOMAIN, VERSION,
                 inputs=[P("x", T), P("weight", T), P("bias", T), P("conv_state", T)],
                 outputs=[P("y", T), P("new_conv_state", T)],
                 type_constraints=[(T, float_types, "activations and weights")]),
    ]
    for schema in schemas:
        if not onnx.defs.has(schema.name, DOMAIN):
            onnx.defs.register_schema(schema)


_register_schemas()
_opset = onnxscript.values.Opset(DOMAIN, VERSION)


def selective_scan_onnx(u, delta, A, B, C, D, z, delta_bias, state, softplus: bool):
    return _opset.SelectiveScan(u, delta, A, B, C, D, z, delta_bias, state, softplus=int(softplus))


def causal_conv1d_onnx(x, weight, bias, conv_state):
    return _opset.CausalConv1d(x, weight, bias, conv_state)


TRANSLATIONS = {torch.ops.hybrid.selective_scan.default: selective_scan_onnx,
                torch.ops.hybrid.causal_conv1d.default: causal_conv1d_onnx}


def _scan_via_op(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """The scan-kernel signature of `hybrid_mllm.core.scan.selective_scan` on top of the op."""
    if z is None:
        raise ValueError("hybrid::SelectiveScan needs the gate z (Mamba always passes it)")
    batch, channels = u.shape[:2]
    zeros = A.new_zeros(channels, dtype=torch.float32)
    if state is None:
        state = u.new_zeros(batch, channels, A.shape[1], dtype=torch.float32)
    return torch.ops.hybrid.selective_scan(u, delta, A.float(), B, C, zeros if D is None else D.float(), z,
                                           zeros if delta_bias is None else delta_bias.float(), state.float(),
                                           softplus)


def _conv_via_op(x, weight, bias, conv_state):
    bias = x.new_zeros(weight.shape[0]) if bias is None else bias
    return torch.ops.hybrid.causal_conv1d(x, weight, bias, conv_state.to(x.dtype))


KERNEL = ScanKernel(fn=_scan_via_op, priority={"cpu": -1, "cuda": -1},
                    description="export only: one hybrid::SelectiveScan node per scan")


class _ExportKernels:
    """A plugin that registers `KERNEL` (only inside `custom_op_paths`)."""

    @staticmethod
    @hookimpl
    def register_scan_kernels(register):
        register(KERNEL_NAME, KERNEL)


@contextmanager
def custom_op_paths(*, conv: bool) -> Iterator[dict]:
    """Inside: the registry knows `KERNEL_NAME` (the scan as one op) and, with `conv`, Mamba's
    conv is the custom op too. Yields the translation table for the exporter. The registry
    and the conv are restored after."""
    previous = registry_module.get_registry()
    mamba_module = sys.modules[MAMBA_MODULE]
    original_conv = mamba_module.causal_conv1d
    registry_module.set_registry(registry_module.Registry.load(extra_plugins=(_ExportKernels(),)))
    if conv:
        mamba_module.causal_conv1d = _conv_via_op
    try:
        yield dict(TRANSLATIONS)
    finally:
        mamba_module.causal_conv1d = original_conv
        registry_module.set_registry(previous)
