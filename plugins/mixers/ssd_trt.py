"""``hybrid::SSDScan`` as a TensorRT plugin (``tensorrt.plugin``), as Mamba-1's nodes are (`ops_trt`).

`register_ssd_plugin()` (once per process; the caller has imported TensorRT:
`hybrid_mllm.runtime.trt`) registers:

- ``@trtp.register``: output shapes and types, from `ssd_trt_shapes` (the rule the CPU tests check);
- ``@trtp.autotune``: float32, float16 or bfloat16 activations with float32 dt, parameters and
  state, in the LINEAR format;
- ``@trtp.aot_impl``: our Triton SSD forward compiled to PTX at build time (`ssd_trt_kernels`),
  launched by TensorRT itself, so engines run without Python. headdim and d_state must be
  build-time constants (they come from the weights) and are compiled into the kernel;
- ``@trtp.impl``: the same kernel launched from Python on TensorRT's stream (``plugin_impl="jit"``).

Mamba-2's conv is Mamba-1's ``hybrid::CausalConv1d`` plugin (`ops_trt.register_conv_plugin`).
No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the annotations of
the decorated functions as objects.
"""

import functools
from typing import List, Tuple  # noqa: UP035  (the typing forms of NVIDIA's samples; tensorrt.plugin reads them)

import torch

from . import ssd_trt_kernels as kernels
from .ops_trt import NAMESPACE, _constant, _launch_params, _sym_ints, trt_type_name
from .ssd_trt_shapes import SSD
from .trt_shapes import autotune_types, output_shapes

SSD_ID = f"{NAMESPACE}::{SSD.name}"


@functools.cache
def register_ssd_plugin() -> None:
    """Register ``hybrid::SSDScan`` with TensorRT (once per process)."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    T = trtp.TensorDesc

    @trtp.register(SSD_ID)
    def ssd_desc(x: T, dt: T, A: T, B: T, C: T, D: T, state: T) -> Tuple[T, T]:  # noqa: UP006
        y_shape, state_shape = output_shapes(SSD, [t.shape_expr for t in (x, dt, A, B, C, D, state)])
        return trtp.from_shape_expr(y_shape, dtype=x.dtype), trtp.from_shape_expr(state_shape, dtype=trt.float32)

    @trtp.autotune(SSD_ID)
    def ssd_autotune(x, dt, A, B, C, D, state, outputs) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
        return [trtp.AutoTuneCombination(autotune_types(SSD), "LINEAR")]

    @trtp.aot_impl(SSD_ID)
    def ssd_aot(x: T, dt: T, A: T, B: T, C: T, D: T, state: T, outputs: Tuple[T, T], tactic: int):  # noqa: UP006
        headdim = _constant(x.shape_expr[3], "the SSD scan's headdim")
        d_state = _constant(B.shape_expr[3], "the SSD scan's d_state")
        compiled = kernels.compile_ssd(trt_type_name(trt, x.dtype), headdim=headdim, d_state=d_state)
        params = _launch_params(trtp, kernels.ssd_grid(x.shape_expr, headdim, trtp.cdiv), compiled)
        return (compiled.name.encode(), compiled.ptx.encode(), params,
                _sym_ints(trtp, kernels.ssd_scalars(x.shape_expr, B.shape_expr)))

    @trtp.impl(SSD_ID)
    def ssd_jit(x, dt, A, B, C, D, state, outputs, stream: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            args = [torch.as_tensor(t, device="cuda") for t in (x, dt, A, B, C, D, state)]
            y, new_state = (torch.as_tensor(t, device="cuda") for t in outputs)
            kernels.launch_ssd(*args, y, new_state)
