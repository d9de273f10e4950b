"""The selective scan: one signature, many kernels, one dispatch point.

Kernels register through the ``register_scan_kernels`` hook as `ScanKernel`s. The
``ref`` kernel is the definition; every other kernel is tested against it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import KernelUnavailableError
from .registry import get_registry

AUTO = "auto"


@dataclass(frozen=True)
class ScanKernel:
    """A selective-scan implementation.

    fn: the kernel, with the signature of `selective_scan` (without ``impl``).
    priority: device type ("cpu", "cuda", ...) -> rank for ``auto``; higher wins. A device
        type that is absent is one the kernel never runs on.
    available: ``available(device) -> None`` when it can run there, else a one-line reason
        that says how to make it available (the install command).
    description: one line for ``hybrid-plugins``.
    export_safe: only standard ONNX ops, traceable with a dynamic sequence axis.
    """

    fn: Callable[..., tuple[Tensor, Tensor]]
    priority: dict[str, int]
    available: Callable[[torch.device], str | None] = field(default=lambda device: None)
    description: str = ""
    export_safe: bool = False


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    softplus: bool = False,
    state: Tensor | None = None,
    *,
    impl: str = AUTO,
) -> tuple[Tensor, Tensor]:
    """Mamba-1 selective scan, dispatched to the kernel named by `impl`.

    Shapes: ``u, delta, z: (batch, D, L)``, ``A: (D, N)``, ``B, C: (batch, N, L)``,
    ``D, delta_bias: (D,)``, ``state: (batch, D, N)`` (the state before the first token;
    zeros when None). Returns ``y: (batch, D, L)`` in ``u``'s dtype and the state after the
    last token, ``(batch, D, N)`` float32.

    With ``delta' = softplus(delta + delta_bias)`` (or without softplus):
    ``h_t = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t``,
    ``y_t = C_t . h_t + D u_t``, then ``y_t *= silu(z_t)`` when z is given.
    """
    kernel = resolve_kernel(impl, u.device)
    return kernel.fn(u, delta, A, B, C, D, z, delta_bias, softplus, state)


def resolve_kernel(impl: str, device: torch.device | str) -> ScanKernel:
    """The kernel for `impl` on `device`; ``auto`` is the highest-priority available one."""
    device = torch.device(device)
    if impl == AUTO:
        return get_registry().get("scan_kernel", _auto_name(get_registry(), device.type))
    kernel: ScanKernel = get_registry().get("scan_kernel", impl)
    if device.type not in kernel.priority:
        runs_on = ", ".join(sorted(kernel.priority)) or "no device"
        raise KernelUnavailableError(
            f"scan kernel '{impl}' does not run on {device.type} tensors (it runs on: {runs_on}). "
            f"Use impl: auto, or move the model to a supported device."
        )
    reason = kernel.available(device)
    if reason:
        raise KernelUnavailableError(f"scan kernel '{impl}' is not available: {reason}")
    return kernel


def auto_kernel_name(device: torch.device | str) -> str:
    """The name ``auto`` resolves to on `device`."""
    return _auto_name(get_registry(), torch.device(device).type)


@functools.cache  # per registry: a registry swapped in (set_registry) gets its own choice
def _auto_name(registry, device_type: str) -> str:
    ranked = sorted(
        (k.priority[device_type], name)
        for name in registry.names("scan_kernel")
        if device_type in (k := registry.get("scan_kernel", name)).priority
    )
    for _, name in reversed(ranked):
        if registry.get("scan_kernel", name).available(torch.device(device_type)) is None:
            return name
    raise KernelUnavailableError(f"no selective-scan kernel runs on {device_type} tensors")


def reset_auto_choice() -> None:
    """Forget the cached ``auto`` choices (after a kernel's availability changes)."""
    _auto_name.cache_clear()
