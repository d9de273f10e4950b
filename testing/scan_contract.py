"""Scan-kernel parity with the reference, for built-in and third-party kernels."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hybrid_mllm.core.registry import get_registry

# (batch, D, N, L, with_state, with_z, with_delta_bias): L crosses chunk boundaries (16, 64, 256)
SCAN_CASES = (
    (1, 4, 4, 1, False, False, False),
    (2, 5, 3, 7, True, True, True),
    (1, 8, 16, 64, False, True, True),
    (2, 3, 16, 65, True, False, True),
    (1, 6, 8, 257, True, True, False),
)


def scan_inputs(batch: int, d: int, n: int, length: int, with_state: bool, with_z: bool, with_bias: bool,
                *, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Random inputs of the scan signature with Mamba-like ranges (A < 0, moderate delta)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    inputs = {
        "u": r(batch, d, length).to(dtype), "delta": r(batch, d, length, scale=0.5).to(dtype),
        "A": -torch.rand(d, n, generator=g).add(0.1).mul(4).to(device),
        "B": r(batch, n, length).to(dtype), "C": r(batch, n, length).to(dtype), "D": r(d),
        "z": r(batch, d, length).to(dtype) if with_z else None,
        "delta_bias": r(d, scale=0.5) if with_bias else None,
        "softplus": True, "state": r(batch, d, n) if with_state else None,
    }
    return inputs


def _ref() -> Callable:
    return get_registry().get("scan_kernel", "ref").fn


def check_scan_matches_ref(fn: Callable, case: tuple, *, device: str = "cpu", tol: float = 1e-4) -> None:
    """Outputs and last state of `fn` match `ref` on one case of `SCAN_CASES`."""
    inputs = scan_inputs(*case, device=device)
    y, h = fn(**inputs)
    y_ref, h_ref = _ref()(**{k: v.cpu() if torch.is_tensor(v) else v for k, v in inputs.items()})
    for name, a, b in (("y", y, y_ref), ("last_state", h, h_ref)):
        assert a.shape == b.shape, f"{name} shape {tuple(a.shape)} != ref {tuple(b.shape)}"
        diff = (a.detach().float().cpu() - b).abs().max().item()
        scale = max(1.0, b.abs().max().item())
        assert diff <= tol * scale, f"{name} vs ref, case {case}: max |diff| = {diff:.3e} (scale {scale:.1f})"


def check_scan_gradients(fn: Callable, case: tuple, *, device: str = "cpu", tol: float = 1e-3) -> None:
    """Gradients of every tensor input through `fn` match autograd through `ref`."""
    inputs = scan_inputs(*case, device=device)
    tensors = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
    grads = []
    for kernel, dev in ((fn, device), (_ref(), "cpu")):
        leaves = {k: v.detach().to(dev).requires_grad_() for k, v in tensors.items()}
        y, h = kernel(**{**inputs, **leaves})
        g = torch.Generator().manual_seed(1)
        w_y, w_h = torch.randn(y.shape, generator=g).to(dev), torch.randn(h.shape, generator=g).to(dev)
        ((y.float() * w_y).sum() + (h * w_h).sum()).backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    for name in tensors:
        a, b = grads[0][name], grads[1][name]
        assert a is not None, f"no gradient for '{name}'"
        diff = (a.float().cpu() - b).abs().max().item()
        scale = max(1.0, b.abs().max().item())
        assert diff <= tol * scale, f"grad '{name}' vs ref, case {case}: max |diff| = {diff:.3e} (scale {scale:.1f})"
