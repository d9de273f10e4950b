"""bfloat16 linear layers as float32 products on x86 CPUs without bfloat16 matrix instructions.

PyTorch's CPU bfloat16 matmul is fast where oneDNN has bfloat16 kernels for the CPU; on one
with AVX2 only (an AMD EPYC of the Zen 3 generation, RESULTS.md "On an AVX2 CPU") it falls
back to a slow generic loop: a bfloat16 prefill of 2048 tokens of the small decode model
spent 98.6 % of its 9.9 s in ``aten::mm``. There this kernel upcasts x and the weight to
float32 per call and runs PyTorch's float32 matmul: the upcast costs N K conversions against
M N K multiply-adds (nothing for a prefill chunk), the product accumulates in float32 and is
rounded to bfloat16 once, as PyTorch's bfloat16 matmul rounds it. What `gemv_cpu` takes (a
few rows: decoding) it leaves to that kernel. It serves
`hybrid_mllm.core.decode.linear` through the ``register_linear_kernels`` hook, i.e. inference
only: with gradients PyTorch's own matmul runs.
"""

from __future__ import annotations

import functools
import platform

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid_mllm.core.decode import LinearKernel

from . import gemv_cpu
from .scan_cpu import cpu_flags

NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names of the instructions oneDNN uses


def native_in(cpuinfo: str | None = None) -> bool:
    """Whether /proc/cpuinfo (or its text `cpuinfo`) lists one of `NATIVE_FLAGS`, or no flags."""
    flags = cpu_flags(cpuinfo)
    return not flags or any(flag in flags for flag in NATIVE_FLAGS)


@functools.cache
def bf16_matmul_is_native() -> bool:
    """False on an x86 Linux CPU whose flags have none of `NATIVE_FLAGS`, True elsewhere
    (other CPUs and systems keep PyTorch's own bfloat16 matmul)."""
    return platform.machine() not in ("x86_64", "AMD64") or native_in()


def accepts(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """bfloat16 CPU tensors where this CPU has no bfloat16 matrix instructions, other than
    the few rows `gemv_cpu` takes."""
    return (x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.device.type == "cpu"
            and (bias is None or bias.dtype == torch.bfloat16) and not bf16_matmul_is_native()
            and not gemv_cpu.accepts(x, weight, bias))


def linear_upcast(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear` of bfloat16 tensors computed in float32: x (..., K), weight (N, K), bias (N,)
    -> (..., N) bfloat16."""
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(torch.bfloat16)


CPU_BF16_UPCAST = LinearKernel(
    fn=linear_upcast, accepts=accepts,
    description="bfloat16 as float32 products where the CPU has no bfloat16 matrix instructions (AVX2)")
