"""SSD-kernel parity with the reference, for built-in and third-party kernels.

A kernel is a function ``fn(x, dt, A, B, C, D, state, chunk_size)`` with the shapes of
`hybrid_mllm.core.ssd.ssd_scan`. `check_ssd_matches_ref` and `check_ssd_gradients` run on the
cases of `SSD_CASES`; `SSD_EDGE_CHECKS` hold inputs a kernel must also survive: an empty
sequence and spikes in dt (compared with a float64 loop). `check_ssd_nan`: a NaN input spoils
no earlier output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hybrid_mllm.core.registry import get_registry

# (batch, L, H, P, G, N, with_state, with_D, chunk_size): L below, at and across chunk boundaries
SSD_CASES = (
    (1, 1, 2, 4, 1, 4, False, True, 16),
    (2, 7, 4, 3, 2, 5, True, True, 4),
    (1, 64, 4, 8, 1, 16, False, False, 16),
    (2, 65, 6, 4, 3, 8, True, True, 16),
    (1, 40, 8, 4, 8, 4, True, True, 64),
    (1, 257, 4, 8, 2, 16, True, True, 32),
)


def ssd_inputs(batch: int, length: int, nheads: int, headdim: int, ngroups: int, d_state: int, with_state: bool,
               with_D: bool, chunk_size: int = 16, *, seed: int = 0, device: str = "cpu",
               dtype: torch.dtype = torch.float32) -> dict:
    """Random keyword inputs of the kernel signature with Mamba-2-like ranges (A < 0, dt > 0)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    return {
        "x": r(batch, length, nheads, headdim).to(dtype),
        "dt": torch.nn.functional.softplus(r(batch, length, nheads, scale=0.5) - 1.0),
        "A": -torch.rand(nheads, generator=g).add(0.1).mul(4).to(device),
        "B": r(batch, length, ngroups, d_state).to(dtype), "C": r(batch, length, ngroups, d_state).to(dtype),
        "D": r(nheads) if with_D else None,
        "state": r(batch, nheads, headdim, d_state) if with_state else None,
        "chunk_size": chunk_size,
    }


def _ref() -> Callable:
    return get_registry().get("ssd_kernel", "ref").fn


def _cpu(inputs: dict) -> dict:
    return {k: v.cpu() if torch.is_tensor(v) else v for k, v in inputs.items()}


def _close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float, where: str) -> None:
    assert actual.shape == expected.shape, f"{name} shape {tuple(actual.shape)} != {tuple(expected.shape)} ({where})"
    diff = (actual.detach().double().cpu() - expected.double()).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    assert diff <= tol * scale, f"{name} vs {where}: max |diff| = {diff:.3e} (scale {scale:.1f})"


def check_ssd_matches_ref(fn: Callable, case: tuple, *, device: str = "cpu", tol: float = 1e-5,
                          dtype: torch.dtype = torch.float32) -> None:
    """Outputs and last state of `fn` match `ref` on one case of `SSD_CASES`."""
    inputs = ssd_inputs(*case, device=device, dtype=dtype)
    y, h = fn(**inputs)
    y_ref, h_ref = _ref()(**_cpu(inputs))
    assert y.dtype == inputs["x"].dtype and h.dtype == torch.float32, f"dtypes y {y.dtype}, last_state {h.dtype}"
    _close("y", y, y_ref.float(), tol, f"ref, case {case}")
    _close("last_state", h, h_ref, tol, f"ref, case {case}")


def check_ssd_gradients(fn: Callable, case: tuple, *, device: str = "cpu", tol: float = 1e-4) -> None:
    """Gradients of every tensor input through `fn` (from y and the last state) match autograd through `ref`."""
    inputs = ssd_inputs(*case, device=device)
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
        assert grads[0][name] is not None, f"no gradient for '{name}'"
        _close(f"grad '{name}'", grads[0][name], grads[1][name], tol, f"ref, case {case}")


def _ref64(x, dt, A, B, C, D=None, state=None, chunk_size=0):
    """The recurrence in float64: the yardstick for inputs that test float32 itself."""
    rep = x.shape[2] // B.shape[2]
    B, C = B.double().repeat_interleave(rep, 2), C.double().repeat_interleave(rep, 2)
    h = torch.zeros(*x.shape[:1], *x.shape[2:], B.shape[-1], dtype=torch.float64) if state is None else state.double()
    ys = []
    for t in range(x.shape[1]):
        dA = torch.exp(dt[:, t].double() * A.double())[:, :, None, None]
        h = dA * h + (dt[:, t, :, None].double() * x[:, t].double())[..., None] * B[:, t, :, None]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    y = torch.stack(ys, 1) + (0 if D is None else x.double() * D.double()[:, None])
    return y, h


def check_ssd_spiky_dt(fn: Callable, *, device: str = "cpu", tol: float = 1e-4) -> None:
    """Spikes in dt (5 % of the steps at 1e4, L = 128 over chunks of 32): output and last state
    match a float64 loop. A kernel that subtracts two long running sums of log-decays loses every
    digit after a spike."""
    inputs = ssd_inputs(2, 128, 4, 4, 2, 8, True, True, 32, device=device)
    r = torch.rand(inputs["dt"].shape, generator=torch.Generator().manual_seed(3)).to(device)
    inputs["dt"] = torch.where(r < 0.05, 1e4, inputs["dt"])
    inputs["x"] = inputs["x"] * torch.where(r < 0.05, 1e-4, 1.0)[..., None]  # keep dt x of order 1
    y, h = fn(**inputs)
    y64, h64 = _ref64(**_cpu(inputs))
    _close("y", y, y64, tol, "a float64 loop with spikes in dt")
    _close("last_state", h, h64, tol, "a float64 loop with spikes in dt")


def check_ssd_empty(fn: Callable, *, device: str = "cpu") -> None:
    """L = 0: an empty output and the initial state."""
    inputs = ssd_inputs(2, 0, 4, 3, 2, 5, True, True, device=device)
    y, h = fn(**inputs)
    assert tuple(y.shape) == (2, 0, 4, 3), f"y has shape {tuple(y.shape)} for an empty sequence, expected (2, 0, 4, 3)"
    assert torch.equal(h.float().cpu(), inputs["state"].float().cpu()), "the last state of an empty sequence is the initial one"


def check_ssd_nan(fn: Callable, *, device: str = "cpu") -> None:
    """A NaN in x at step 40 of 64 (chunks of 16) and one in B at step 50: NaN exactly where `ref`
    has NaN, and every earlier output as without them (no 0 * NaN into earlier tokens)."""
    inputs = ssd_inputs(1, 64, 4, 4, 2, 8, True, True, 16, device=device)
    clean_y, _ = fn(**inputs)
    inputs["x"], inputs["B"] = inputs["x"].clone(), inputs["B"].clone()
    inputs["x"][0, 40, 1, 2] = float("nan")
    inputs["B"][0, 50, 1, 3] = float("nan")
    y, h = fn(**inputs)
    y_ref, h_ref = _ref()(**_cpu(inputs))
    for name, a, b in (("y", y, y_ref), ("last_state", h, h_ref)):
        where = torch.isnan(a.detach().cpu()) != torch.isnan(b)
        assert not where.any(), f"{name}: NaN where ref has none, or none where ref has one, at {where.nonzero()[:3].tolist()}"
    early = (y[:, :40].detach().float().cpu() - clean_y[:, :40].detach().float().cpu()).abs().max().item()
    assert early <= 1e-5, f"outputs before the NaN changed by {early:.3e}"


SSD_EDGE_CHECKS = (check_ssd_empty, check_ssd_spiky_dt)
