"""The ``mamba_ssm`` scan kernel: the CUDA selective scan of the mamba-ssm package.

mamba-ssm's ``selective_scan_fn`` takes no initial state, so a call with ``state`` is
delegated to the Triton kernel (`scan_triton`); without a state it runs mamba-ssm's
kernel, with its own backward. mamba-ssm requires ``delta``, ``B``, ``C`` and ``z`` in
``u``'s dtype and ``A``, ``D``, ``delta_bias`` in float32: they are cast (casting a
float32 ``delta`` to a bfloat16 ``u``'s dtype rounds it, as mamba-ssm itself would).

mamba_ssm is imported on first use: importing it loads CUDA extensions and Triton.
"""

from __future__ import annotations

import torch

from hybrid_mllm.core.scan import ScanKernel

from .scan_triton import selective_scan_triton

INSTALL_HINT = "pip install mamba-ssm --no-build-isolation"


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """Same signature and shapes as `hybrid_mllm.core.scan.selective_scan`.

    u, delta, z: (batch, D, L)  A: (D, N)  B, C: (batch, N, L)  D, delta_bias: (D,)
    state: (batch, D, N) -> y: (batch, D, L) in u's dtype, last_state: (batch, D, N) float32.
    With ``state`` given, runs the Triton kernel instead (mamba-ssm has no initial state).
    """
    if state is not None:
        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, softplus, state)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    dtype = u.dtype
    y, last_state = selective_scan_fn(
        u, delta.to(dtype), A.float(), B.to(dtype), C.to(dtype),
        D.float() if D is not None else None,
        z.to(dtype) if z is not None else None,
        delta_bias.float() if delta_bias is not None else None,
        delta_softplus=bool(softplus), return_last_state=True,
    )
    return y, last_state.float()


def mamba_ssm_available(device: torch.device | str) -> str | None:
    """None when mamba-ssm's kernel runs on `device`, else the reason and the install hint."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"mamba-ssm's scan runs on CUDA tensors only, not {device.type} ({INSTALL_HINT} on a CUDA machine)"
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
    except Exception as error:  # ImportError, or an OSError/RuntimeError from its CUDA extension
        return f"mamba_ssm does not import ({type(error).__name__}: {error}): {INSTALL_HINT}".replace("\n", " ")
    return None


MAMBA_SSM = ScanKernel(
    fn=selective_scan_mamba_ssm,
    priority={"cuda": 100},
    available=mamba_ssm_available,
    description="mamba-ssm's CUDA selective scan (with an initial state: the Triton kernel)",
)
