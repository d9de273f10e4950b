"""The SSD scan of Mamba-2 (Dao & Gu, 2024): one signature, many kernels, one dispatch point.

Kernels register through the ``register_ssd_kernels`` hook as `SSDKernel`s (registry kind
``ssd_kernel``). The ``ref`` kernel is the definition; every other kernel is tested against it.
The gate z and the gated RMSNorm are not part of the scan: the mixer applies them.
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
KIND = "ssd_kernel"


@dataclass(frozen=True)
class SSDKernel:
    """An SSD-scan implementation.

    fn: the kernel, ``fn(x, dt, A, B, C, D, state, chunk_size) -> (y, last_state)`` with the
        shapes of `ssd_scan`.
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


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    state: Tensor | None = None,
    *,
    chunk_size: int = 256,
    impl: str = AUTO,
) -> tuple[Tensor, Tensor]:
    """Mamba-2's scan with a scalar decay per head, dispatched to the kernel named by `impl`.

    x: (batch, L, H, P) [P = headdim]; dt: (batch, L, H) float32, already
    ``softplus(dt + dt_bias)``, clamped to dt_limit and zeroed at padding by the mixer;
    A: (H,) float32, negative; B, C: (batch, L, G, N) [G = ngroups, N = d_state; head h uses
    group ``h // (H // G)``]; D: (H,) or None; state: (batch, H, P, N) float32, the state
    before the first token (zeros when None).

    ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T`` (outer product, (P, N) per head),
    ``y_t = h_t C_t + D x_t``. Returns y (batch, L, H, P) in x's dtype and the state after the
    last token (batch, H, P, N) float32.
    """
    check_shapes(x, dt, A, B, C, D, state)
    kernel = resolve_kernel(impl, x.device)
    return kernel.fn(x, dt, A, B, C, D, state, chunk_size)


def check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                 state: Tensor | None) -> None:
    """ValueError naming the first argument whose shape does not fit x: (batch, L, H, P)."""
    if x.dim() != 4:
        raise ValueError(f"ssd_scan: x must be (batch, L, H, P), got shape {tuple(x.shape)}")
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = (B.shape[2], B.shape[3]) if B.dim() == 4 else (0, 0)
    expected = {
        "dt": (batch, length, nheads), "A": (nheads,), "B": (batch, length, ngroups, d_state),
        "C": (batch, length, ngroups, d_state), "D": (nheads,), "state": (batch, nheads, headdim, d_state),
    }
    for name, value in (("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("state", state)):
        if value is not None and tuple(value.shape) != expected[name]:
            raise ValueError(f"ssd_scan: {name} has shape {tuple(value.shape)}, expected {expected[name]} "
                             f"for x of shape {tuple(x.shape)}")
    if ngroups < 1 or nheads % ngroups:
        raise ValueError(f"ssd_scan: B and C have {ngroups} groups, which must divide the {nheads} heads of x")


def resolve_kernel(impl: str, device: torch.device | str) -> SSDKernel:
    """The kernel for `impl` on `device`; ``auto`` is the highest-priority available one."""
    device = torch.device(device)
    if impl == AUTO:
        return get_registry().get(KIND, _auto_name(get_registry(), device.type))
    kernel: SSDKernel = get_registry().get(KIND, impl)
    if device.type not in kernel.priority:
        runs_on = ", ".join(sorted(kernel.priority)) or "no device"
        raise KernelUnavailableError(
            f"ssd kernel '{impl}' does not run on {device.type} tensors (it runs on: {runs_on}). "
            f"Use impl: auto, or move the model to a supported device."
        )
    reason = kernel.available(device)
    if reason:
        raise KernelUnavailableError(f"ssd kernel '{impl}' is not available: {reason}")
    return kernel


def auto_kernel_name(device: torch.device | str) -> str:
    """The name ``auto`` resolves to on `device`."""
    return _auto_name(get_registry(), torch.device(device).type)


@functools.cache  # per registry: a registry swapped in (set_registry) gets its own choice
def _auto_name(registry, device_type: str) -> str:
    ranked = sorted(
        (k.priority[device_type], name)
        for name in registry.names(KIND)
        if device_type in (k := registry.get(KIND, name)).priority
    )
    for _, name in reversed(ranked):
        if registry.get(KIND, name).available(torch.device(device_type)) is None:
            return name
    raise KernelUnavailableError(f"no SSD kernel runs on {device_type} tensors")


def reset_auto_choice() -> None:
    """Forget the cached ``auto`` choices (after a kernel's availability changes)."""
    _auto_name.cache_clear()
