"""``hybrid::SelectiveScan`` and ``hybrid::CausalConv1d`` as TensorRT plugins (``tensorrt.plugin``).

`register_scan_plugin()` and `register_conv_plugin()` (each once per process; the caller has
imported TensorRT, with the install hint when it is missing: `hybrid_mllm.runtime.trt`)
register for their node:

- ``@trtp.register``: output shapes and types, from `trt_shapes` (the rule the CPU tests check);
- ``@trtp.autotune``: the type combinations (float32, float16 or bfloat16 activations with
  float32 parameters and SSM state, `trt_shapes.autotune_types`) in the LINEAR format;
- ``@trtp.aot_impl``: our Triton kernels compiled to PTX at build time (`trt_kernels`), launched
  by TensorRT itself. Engines built this way run without Python (trtexec, C++, Triton
  Inference Server). This is what the engine build uses: it marks every node ``aot=1``;
- ``@trtp.impl``: the same Triton kernels launched from Python on TensorRT's stream, for
  engines built with ``plugin_impl="jit"`` (a debugging aid: such an engine needs this
  module registered in the process that runs it).

The ONNX parser maps a node to a plugin by its op type (``SelectiveScan``) and namespace
(the ``plugin_namespace`` attribute the engine build adds; TensorRT >= 10.10 also reads
the node's domain, ``hybrid``). The node attribute ``softplus`` is a plugin attribute; an
AOT engine does not store attributes, so it is compiled into the kernel as a constant.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the annotations
of the decorated functions as objects to tell tensors from attributes.
"""

import functools
from typing import List, Tuple  # noqa: UP035  (the typing forms of NVIDIA's samples; tensorrt.plugin reads them)

import torch

from . import trt_kernels as kernels
from . import trt_shapes as shapes

NAMESPACE = "hybrid"
SCAN_ID, CONV_ID = f"{NAMESPACE}::{shapes.SCAN.name}", f"{NAMESPACE}::{shapes.CONV.name}"


def trt_type_name(trt, dtype) -> str:
    """TensorRT DataType -> FP32 / FP16 / BF16 (the names `kernels` compiles for)."""
    names = {trt.float32: "FP32", trt.float16: "FP16", trt.bfloat16: "BF16"}
    if dtype not in names:
        raise ValueError(f"the hybrid plugins take float32, float16 or bfloat16 tensors, not {dtype}")
    return names[dtype]


def _constant(expr, what: str) -> int:
    if not expr.is_constant:
        raise ValueError(f"{what} must be a build-time constant (it comes from the model's weights)")
    return int(expr.constant_value())


@functools.cache
def register_scan_plugin() -> None:
    """Register ``hybrid::SelectiveScan`` with TensorRT (once per process)."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    T = trtp.TensorDesc

    @trtp.register(SCAN_ID)
    def scan_desc(u: T, delta: T, A: T, B: T, C: T, D: T, z: T, delta_bias: T, state: T,
                  softplus: int) -> Tuple[T, T]:  # noqa: UP006
        exprs = [t.shape_expr for t in (u, delta, A, B, C, D, z, delta_bias, state)]
        y_shape, state_shape = shapes.output_shapes(shapes.SCAN, exprs)
        y = trtp.from_shape_expr(y_shape, dtype=u.dtype)
        return y, trtp.from_shape_expr(state_shape, dtype=trt.float32)

    @trtp.autotune(SCAN_ID)
    def scan_autotune(u, delta, A, B, C, D, z, delta_bias, state, outputs) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
        return [trtp.AutoTuneCombination(shapes.autotune_types(shapes.SCAN), "LINEAR")]

    @trtp.aot_impl(SCAN_ID)
    def scan_aot(u: T, delta: T, A: T, B: T, C: T, D: T, z: T, delta_bias: T, state: T, softplus: int,
                 outputs: Tuple[T, T], tactic: int):  # noqa: UP006
        d_state = _constant(A.shape_expr[1], "the scan's d_state")
        compiled = kernels.compile_scan(trt_type_name(trt, u.dtype), softplus=bool(softplus), d_state=d_state)
        params = _launch_params(trtp, kernels.scan_grid(u.shape_expr, trtp.cdiv), compiled)
        scalars = kernels.scan_scalars(u.shape_expr, A.shape_expr)
        return compiled.name.encode(), compiled.ptx.encode(), params, _sym_ints(trtp, scalars)

    @trtp.impl(SCAN_ID)
    def scan_jit(u, delta, A, B, C, D, z, delta_bias, state, softplus: int, outputs, stream: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            args = [torch.as_tensor(t, device="cuda") for t in (u, delta, A, B, C, D, z, delta_bias, state)]
            y, new_state = (torch.as_tensor(t, device="cuda") for t in outputs)
            kernels.launch_scan(*args, y, new_state, softplus=bool(softplus))


@functools.cache
def register_conv_plugin() -> None:
    """Register ``hybrid::CausalConv1d`` with TensorRT (once per process)."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    T = trtp.TensorDesc

    @trtp.register(CONV_ID)
    def conv_desc(x: T, weight: T, bias: T, conv_state: T) -> Tuple[T, T]:  # noqa: UP006
        exprs = [t.shape_expr for t in (x, weight, bias, conv_state)]
        y_shape, state_shape = shapes.output_shapes(shapes.CONV, exprs)
        return trtp.from_shape_expr(y_shape, dtype=x.dtype), trtp.from_shape_expr(state_shape, dtype=x.dtype)

    @trtp.autotune(CONV_ID)
    def conv_autotune(x, weight, bias, conv_state, outputs) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
        return [trtp.AutoTuneCombination(shapes.autotune_types(shapes.CONV), "LINEAR")]

    @trtp.aot_impl(CONV_ID)
    def conv_aot(x: T, weight: T, bias: T, conv_state: T, outputs: Tuple[T, T], tactic: int):  # noqa: UP006
        kernel_size = _constant(weight.shape_expr[1], "the conv's kernel size")
        compiled = kernels.compile_conv(trt_type_name(trt, x.dtype), kernel_size=kernel_size)
        params = _launch_params(trtp, kernels.conv_grid(x.shape_expr, trtp.cdiv), compiled)
        return compiled.name.encode(), compiled.ptx.encode(), params, _sym_ints(trtp, kernels.conv_scalars(x.shape_expr))

    @trtp.impl(CONV_ID)
    def conv_jit(x, weight, bias, conv_state, outputs, stream: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            args = [torch.as_tensor(t, device="cuda") for t in (x, weight, bias, conv_state)]
            y, new_state = (torch.as_tensor(t, device="cuda") for t in outputs)
            kernels.launch_conv(*args, y, new_state)


def _launch_params(trtp, grid, compiled: kernels.CompiledKernel):
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = grid
    params.block_x = compiled.block_x
    params.shared_mem = compiled.shared
    return params


def _sym_ints(trtp, values):
    return trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in values])
