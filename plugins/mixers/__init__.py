"""Built-in sequence mixers, selective-scan kernels, the bfloat16 CPU linear kernel of decoding and
Mamba's export declaration, registered as a plugin."""

from __future__ import annotations

from hybrid_mllm.core.hookspecs import hookimpl
from hybrid_mllm.core.scan import ScanKernel

from ._scan_common import CHUNK
from .attention import Attention
from .gemv_cpu import CPU_BF16
from .mamba import Mamba
from .mamba_export import MAMBA_EXPORT
from .scan_chunked import selective_scan_chunked
from .scan_cpu import CPU_FUSED
from .scan_export import CHUNKED_EXPORT
from .scan_mamba_ssm import MAMBA_SSM
from .scan_ref import selective_scan_ref
from .scan_triton import TRITON

ANY_DEVICE = ("cpu", "cuda", "mps", "xpu")


@hookimpl
def register_mixers(register):
    register("attention", Attention)
    register("mamba", Mamba)


@hookimpl
def register_scan_kernels(register):
    register("ref", ScanKernel(
        fn=selective_scan_ref, priority=dict.fromkeys(ANY_DEVICE, 0),
        description="sequential float32 loop over time: the definition (slow)",
    ))
    register("chunked", ScanKernel(
        fn=selective_scan_chunked, priority=dict.fromkeys(ANY_DEVICE, 10),
        description=f"chunks of {CHUNK} tokens, stable segment sums, standard ops (fallback; its Python loop over "
                    "chunks fixes the length when traced, so ONNX export uses chunked_export)",
    ))
    register("cpu_fused", CPU_FUSED)
    register("chunked_export", CHUNKED_EXPORT)
    register("triton", TRITON)
    register("mamba_ssm", MAMBA_SSM)


@hookimpl
def register_exports(register):
    register(Mamba, MAMBA_EXPORT)


@hookimpl
def register_linear_kernels(register):
    register("cpu_bf16", CPU_BF16)
