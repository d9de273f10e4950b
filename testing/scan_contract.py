"""Scan-kernel parity with the reference, for built-in and third-party kernels.

`check_scan_matches_ref` and `check_scan_gradients` run on the cases of `SCAN_CASES`;
`SCAN_EDGE_CHECKS` hold inputs a kernel must also survive: an empty sequence, spikes in
delta (compared with a float64 loop) and a NaN input (which must spoil no earlier output).
"""

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


def _ref64(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """The reference's recurrence in float64: the yardstick for inputs that test float32 itself."""
    F = torch.nn.functional
    d = delta.double() + (0 if delta_bias is None else delta_bias.double()[:, None])
    d = F.softplus(d) if softplus else d
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64) if state is None else state.double()
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(d[:, :, t, None] * A.double()) * h + (d[:, :, t] * u[:, :, t].double())[:, :, None] * B[:, None, :, t].double()
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t].double()))
    y = torch.stack(ys, -1) + (0 if D is None else u.double() * D.double()[:, None])
    return (y if z is None else y * F.silu(z.double())), h


def _cpu(inputs: dict) -> dict:
    return {k: v.cpu() if torch.is_tensor(v) else v for k, v in inputs.items()}


def check_scan_spiky_delta(fn: Callable, *, device: str = "cpu", tol: float = 1e-4) -> None:
    """Spikes in delta (5 % of the steps at 1e4, 10 % at -5, softplus, L = 128): output and last
    state match a float64 loop. A kernel that subtracts two long running sums of log-decays
    loses every digit after a spike."""
    inputs = scan_inputs(2, 8, 16, 128, True, True, True, device=device)
    r = torch.rand(inputs["delta"].shape, generator=torch.Generator().manual_seed(3)).to(device)
    inputs["delta"] = torch.where(r < 0.05, 1e4, torch.where(r < 0.15, -5.0, inputs["delta"]))
    y, h = fn(**inputs)
    y64, h64 = _ref64(**_cpu(inputs))
    for name, a, b in (("y", y, y64), ("last_state", h, h64)):
        diff = (a.detach().double().cpu() - b).abs().max().item()
        scale = max(1.0, b.abs().max().item())
        assert diff <= tol * scale, f"{name} with spikes in delta vs a float64 loop: max |diff| = {diff:.3e} (scale {scale:.1f})"


def check_scan_nan(fn: Callable, *, device: str = "cpu") -> None:
    """A NaN in u at step 40 of 64: NaN exactly where `ref` has NaN (from that step on), and
    every earlier output as without it (a NaN must not spread backwards, e.g. through 0 * NaN)."""
    inputs = scan_inputs(1, 4, 8, 64, True, True, True, device=device)
    clean_y, _ = fn(**inputs)
    inputs["u"] = inputs["u"].clone()
    inputs["u"][0, 1, 40] = float("nan")
    y, h = fn(**inputs)
    y_ref, h_ref = _ref()(**_cpu(inputs))
    for name, a, b in (("y", y, y_ref), ("last_state", h, h_ref)):
        where = torch.isnan(a.detach().cpu()) != torch.isnan(b)
        assert not where.any(), f"{name}: NaN where ref has none, or none where ref has one, at {where.nonzero()[:3].tolist()}"
    early = (y[..., :40].detach().float().cpu() - clean_y[..., :40].detach().float().cpu()).abs().max().item()
    assert early <= 1e-5, f"outputs before the NaN changed by {early:.3e}"


def check_scan_empty(fn: Callable, *, device: str = "cpu") -> None:
    """L = 0: an empty output and the initial state."""
    inputs = scan_inputs(2, 3, 4, 0, True, True, True, device=device)
    y, h = fn(**inputs)
    assert tuple(y.shape) == (2, 3, 0), f"y has shape {tuple(y.shape)} for an empty sequence, expected (2, 3, 0)"
    assert torch.equal(h.float().cpu(), inputs["state"].float().cpu()), "the last state of an empty sequence is the initial one"


SCAN_EDGE_CHECKS = (check_scan_empty, check_scan_spiky_delta, check_scan_nan)
