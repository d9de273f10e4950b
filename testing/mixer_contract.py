"""The mixer contract (`hybrid_mllm.core.mixer`), one check per function.

Every check takes the mixer class, a small ``d_model`` and the options to build it with,
and works in float32 on the CPU unless a device is given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

BATCH, LENGTH = 2, 19


def _build(cls: type, d_model: int, options: dict[str, Any] | None, device: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls(d_model, **(options or {}), device=device).float()


def _inputs(d_model: int, device: str, length: int = LENGTH, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, length, d_model, generator=g).to(device)


def _close(actual: Tensor, expected: Tensor, what: str, tol: float) -> None:
    diff = (actual.float() - expected.float()).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.float().abs().max().item() if expected.numel() else 0.0)
    assert diff <= tol * scale, f"{what}: max |diff| = {diff:.3e} > {tol:.1e} x {scale:.2f}"


def check_shapes(cls: type, d_model: int = 16, options: dict | None = None, device: str = "cpu") -> None:
    """y has x's shape; init_state and the returned state match `state_specs`."""
    mixer = _build(cls, d_model, options, device)
    x = _inputs(d_model, device)
    y, state = mixer(x)
    assert y.shape == x.shape, f"output shape {tuple(y.shape)} != input shape {tuple(x.shape)}"
    init = mixer.init_state(BATCH, device=device)
    for states, what in ((init, "init_state"), (state, "returned state")):
        assert isinstance(states, tuple), f"{what} must be a tuple of tensors, got {type(states).__name__}"
        assert len(states) == len(mixer.state_specs), f"{what} has {len(states)} tensors, state_specs names {len(mixer.state_specs)}"
    for spec, s0, s1 in zip(mixer.state_specs, init, state):
        assert s0.shape[0] == BATCH and s1.shape[0] == BATCH, f"state '{spec.name}': dim 0 must be the batch"
        for dim in range(s0.dim()):
            grows = spec.seq_dim == dim
            assert (s1.shape[dim] == s0.shape[dim] + LENGTH) if grows else (s1.shape[dim] == s0.shape[dim]), (
                f"state '{spec.name}' dim {dim}: {s0.shape[dim]} -> {s1.shape[dim]} after {LENGTH} tokens "
                f"({'should grow by L' if grows else 'should stay fixed'}; seq_dim={spec.seq_dim})")


def check_causality(cls: type, d_model: int = 16, options: dict | None = None, device: str = "cpu",
                    tol: float = 1e-5) -> None:
    """Changing token t changes no output before t."""
    mixer = _build(cls, d_model, options, device)
    x = _inputs(d_model, device)
    t = LENGTH // 2
    x2 = x.clone()
    x2[:, t:] += torch.randn_like(x2[:, t:])
    with torch.no_grad():
        y1, _ = mixer(x)
        y2, _ = mixer(x2)
    _close(y2[:, :t], y1[:, :t], f"outputs before position {t} after changing inputs from {t} on", tol)
    assert (y2[:, t:] - y1[:, t:]).abs().max() > 0, "outputs from the changed position on did not change"


def check_gradients(cls: type, d_model: int = 16, options: dict | None = None, device: str = "cpu") -> None:
    """Every parameter and the input get a finite, non-zero gradient."""
    mixer = _build(cls, d_model, options, device)
    x = _inputs(d_model, device).requires_grad_()
    y, _ = mixer(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, "input gradient"
    for name, p in mixer.named_parameters():
        assert p.grad is not None, f"parameter '{name}' got no gradient"
        assert torch.isfinite(p.grad).all(), f"parameter '{name}' has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"parameter '{name}' has an all-zero gradient"


def check_step_equals_full(cls: type, d_model: int = 16, options: dict | None = None, device: str = "cpu",
                           tol: float = 1e-4) -> None:
    """Decoding token by token through the state equals the full forward, and so does the final state."""
    mixer = _build(cls, d_model, options, device)
    x = _inputs(d_model, device)
    with torch.no_grad():
        y_full, state_full = mixer(x)
        state, ys = None, []
        for t in range(LENGTH):
            y, state = mixer(x[:, t:t + 1], state)
            ys.append(y)
    _close(torch.cat(ys, 1), y_full, "token-by-token outputs vs full forward", tol)
    for spec, a, b in zip(mixer.state_specs, state, state_full):
        _close(a, b, f"state '{spec.name}' after stepping vs after the full forward", tol)


def check_chunked_equals_full(cls: type, d_model: int = 16, options: dict | None = None, device: str = "cpu",
                              tol: float = 1e-4) -> None:
    """Two chunks with the state carried between them equal one pass."""
    mixer = _build(cls, d_model, options, device)
    x = _inputs(d_model, device)
    cut = 7
    with torch.no_grad():
        y_full, _ = mixer(x)
        y1, state = mixer(x[:, :cut])
        y2, _ = mixer(x[:, cut:], state)
    _close(torch.cat([y1, y2], 1), y_full, f"chunks [0, {cut}) + [{cut}, {LENGTH}) vs full forward", tol)


def check_padding(cls: type, d_model: int = 16, options: dict | None = None, device: str = "cpu",
                  tol: float = 1e-4) -> None:
    """Left padding (mask False) leaks nowhere: the padded sequence gives the same outputs
    and, continued by one more token, the same next output as the sequence alone."""
    mixer = _build(cls, d_model, options, device)
    x = _inputs(d_model, device)
    pad = 5
    padded = torch.cat([torch.randn(BATCH, pad, d_model, device=device) * 3, x], dim=1)  # junk padding
    mask = torch.ones(BATCH, pad + LENGTH, dtype=torch.bool, device=device)
    mask[:, :pad] = False
    nxt = _inputs(d_model, device, length=1, seed=2)
    with torch.no_grad():
        y_alone, state_alone = mixer(x)
        y_pad, state_pad = mixer(padded, None, mask)
        next_alone, _ = mixer(nxt, state_alone)
        next_pad, _ = mixer(nxt, state_pad, torch.ones(BATCH, 1, dtype=torch.bool, device=device))
    _close(y_pad[:, pad:], y_alone, "outputs of a left-padded sequence vs the sequence alone", tol)
    _close(next_pad, next_alone, "next-token output after a left-padded prefill vs after the sequence alone", tol)


MIXER_CHECKS = (check_shapes, check_causality, check_gradients, check_step_equals_full,
                check_chunked_equals_full, check_padding)
