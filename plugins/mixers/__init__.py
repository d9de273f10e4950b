"""Built-in sequence mixers, selective-scan and SSD kernels, the CPU linear kernel and fused
block steps of decoding and the Mamba / Mamba-2 export declarations, registered as a plugin."""

from __future__ import annotations

from hybrid_mllm.core.hookspecs import hookimpl
from hybrid_mllm.core.scan import ScanKernel
from hybrid_mllm.core.ssd import SSDKernel

from ._scan_common import CHUNK
from .attention import Attention
from .block_cpu import CPU_ATTENTION, CPU_FFN, CPU_MAMBA
from .gemv_cpu import CPU_FEW_ROWS
from .linear_upcast import CPU_BF16_UPCAST
from .mamba import Mamba
from .mamba2 import Mamba2
from .mamba2_export import MAMBA2_EXPORT
from .mamba_export import MAMBA_EXPORT
from .model_cpu import CPU_MODEL
from .parallel import Parallel
from .scan_chunked import selective_scan_chunked
from .scan_cpu import CPU_FUSED
from .scan_export import CHUNKED_EXPORT
from .scan_mamba_ssm import MAMBA_SSM
from .scan_ref import selective_scan_ref
from .scan_triton import TRITON
from .stack_cpu import CPU_STACK
from .ssd_chunked import ssd_scan_chunked
from .ssd_cpu import CPU_SSD
from .ssd_mamba_ssm import MAMBA_SSM as SSD_MAMBA_SSM
from .ssd_ref import ssd_scan_ref
from .ssd_triton import TRITON_SSD

ANY_DEVICE = ("cpu", "cuda", "mps", "xpu")


@hookimpl
def register_mixers(register):
    register("attention", Attention)
    register("mamba", Mamba)
    register("mamba2", Mamba2)
    register("parallel", Parallel)


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
def register_ssd_kernels(register):
    register("ref", SSDKernel(
        fn=ssd_scan_ref, priority=dict.fromkeys(ANY_DEVICE, 0),
        description="sequential float32 loop over time: the definition (slow)",
    ))
    register("chunked", SSDKernel(
        fn=ssd_scan_chunked, priority=dict.fromkeys(ANY_DEVICE, 10),
        description="the SSD matmul form over chunks of chunk_size tokens, all chunks at once, standard ops (not yet "
                    "export_safe: torch.export with a dynamic L stops at the guards of its reshape into chunks)",
    ))
    register("cpu", CPU_SSD)
    register("triton", TRITON_SSD)
    register("mamba_ssm", SSD_MAMBA_SSM)


@hookimpl
def register_exports(register):
    register(Mamba, MAMBA_EXPORT)
    register(Mamba2, MAMBA2_EXPORT)


@hookimpl
def register_linear_kernels(register):
    register("cpu_few_rows", CPU_FEW_ROWS)
    register("cpu_bf16_upcast", CPU_BF16_UPCAST)


@hookimpl
def register_block_steps(register):
    register("cpu_attention", CPU_ATTENTION)
    register("cpu_ffn", CPU_FFN)
    register("cpu_mamba", CPU_MAMBA)
    register("cpu_stack", CPU_STACK)
    register("cpu_model", CPU_MODEL)
