"""The ``mamba_ssm`` SSD kernel: mamba-ssm's Triton ``mamba_chunk_scan_combined`` on CUDA.

Called with dt already passed through softplus, clamped and masked by the mixer (so without
its dt_bias, dt_softplus and dt_limit), with the initial state and returning the final one;
it has its own backward. B and C are cast to x's dtype, A and D to float32. mamba_ssm is
imported on first use: importing it loads CUDA extensions and Triton.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybrid_mllm.core.ssd import SSDKernel

INSTALL_HINT = "pip install mamba-ssm --no-build-isolation"


def ssd_scan_mamba_ssm(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                       state: Tensor | None, chunk_size: int = 256) -> tuple[Tensor, Tensor]:
    """Same shapes as `hybrid_mllm.core.ssd.ssd_scan`, on CUDA tensors.

    x: (batch, L, H, P)  dt: (batch, L, H)  A: (H,)  B, C: (batch, L, G, N)  D: (H,)
    state: (batch, H, P, N) -> y: (batch, L, H, P) in x's dtype, last_state: (batch, H, P, N) float32
    """
    batch, length, nheads, headdim = x.shape
    if length == 0:  # nothing to scan: mamba-ssm's kernels expect at least one chunk
        h = x.new_zeros(batch, nheads, headdim, B.shape[-1], dtype=torch.float32) if state is None else state.float()
        return x.new_zeros(x.shape), h
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    y, last_state = mamba_chunk_scan_combined(
        x, dt, A.float(), B.to(x.dtype), C.to(x.dtype), chunk_size,
        D=None if D is None else D.float(), initial_states=None if state is None else state.float(),
        return_final_states=True,
    )
    return y.to(x.dtype), last_state.float()


def mamba_ssm_available(device: torch.device | str) -> str | None:
    """None when mamba-ssm's SSD kernel runs on `device`, else the reason and the install hint."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"mamba-ssm's SSD scan runs on CUDA tensors only, not {device.type} ({INSTALL_HINT} on a CUDA machine)"
    try:
        import mamba_ssm.ops.triton.ssd_combined  # noqa: F401
    except (ImportError, OSError, RuntimeError) as error:  # missing, or its CUDA extension fails to load
        return f"mamba_ssm does not import ({type(error).__name__}: {error}): {INSTALL_HINT}".replace("\n", " ")
    return None


MAMBA_SSM = SSDKernel(
    fn=ssd_scan_mamba_ssm,
    priority={"cuda": 100},
    available=mamba_ssm_available,
    description="mamba-ssm's Triton mamba_chunk_scan_combined (CUDA)",
)
