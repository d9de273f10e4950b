"""The encoder and connector contracts (`hybrid_mllm.core.encoder`), one check per function.

Encoder checks take the class and its options (``cls(**options)``); connector checks the
class, ``d_model``, the encoder width ``in_dim`` and the options (``cls(d_model, in_dim=...,
**options)``). All run in float32 on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hybrid_mllm.core.encoder import EncoderOutput

TILES = 3


def _close(actual: Tensor, expected: Tensor, what: str, tol: float) -> None:
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    assert diff <= tol * scale, f"{what}: max |diff| = {diff:.3e} > {tol:.1e} x {scale:.2f}"


def _encoder(cls: type, options: dict[str, Any] | None):
    torch.manual_seed(0)
    return cls(**(options or {})).float().eval()


def _pixels(encoder, n: int = TILES) -> Tensor:
    size = encoder.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def check_encoder_shapes(cls: type, options: dict | None = None) -> None:
    """The declared facts (image_size, grid, out_dim, num_prefix_tokens, mean, std) match the output."""
    encoder = _encoder(cls, options)
    assert len(encoder.mean) == 3 and len(encoder.std) == 3, "mean and std need one value per RGB channel"
    with torch.no_grad():
        out = encoder(_pixels(encoder))
    assert isinstance(out, EncoderOutput), f"forward must return an EncoderOutput, got {type(out).__name__}"
    gh, gw = encoder.grid
    assert out.patches.shape == (TILES, gh, gw, encoder.out_dim), (
        f"patches {tuple(out.patches.shape)}, declared (N, *grid, out_dim) = {(TILES, gh, gw, encoder.out_dim)}")
    assert out.prefix.shape == (TILES, encoder.num_prefix_tokens, encoder.out_dim), (
        f"prefix {tuple(out.prefix.shape)}, declared (N, num_prefix_tokens, out_dim)")


def check_encoder_tiles_independent(cls: type, options: dict | None = None, tol: float = 1e-4) -> None:
    """Each tile's features depend on that tile only: a batch equals its tiles one by one
    (images are encoded in batches of any size)."""
    encoder = _encoder(cls, options)
    pixels = _pixels(encoder)
    with torch.no_grad():
        together = encoder(pixels)
        alone = [encoder(pixels[i:i + 1]) for i in range(TILES)]
    _close(torch.cat([a.patches for a in alone]), together.patches, "patches, one tile at a time vs batched", tol)
    _close(torch.cat([a.prefix for a in alone]), together.prefix, "prefix, one tile at a time vs batched", tol)


def check_encoder_gradients(cls: type, options: dict | None = None) -> None:
    """Gradients reach the pixels and every trainable parameter, finite."""
    encoder = _encoder(cls, options).train()
    pixels = _pixels(encoder).requires_grad_()
    out = encoder(pixels)
    (out.patches.sum() + out.prefix.sum()).backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all(), "pixel gradient"
    for name, p in encoder.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"parameter '{name}': no finite gradient"


def _connector(cls: type, d_model: int, in_dim: int, options: dict | None):
    torch.manual_seed(0)
    return cls(d_model, in_dim=in_dim, **(options or {})).float().eval()


def check_connector_shapes(cls: type, d_model: int = 32, in_dim: int = 16, options: dict | None = None) -> None:
    """(N, gh, gw, in_dim) -> (N, *out_grid((gh, gw)), d_model), for square, oblong and 1x1 grids."""
    connector = _connector(cls, d_model, in_dim, options)
    for grid in ((4, 4), (3, 5), (1, 1)):
        with torch.no_grad():
            out = connector(torch.randn(TILES, *grid, in_dim))
        want = (TILES, *connector.out_grid(grid), d_model)
        assert tuple(out.shape) == want, f"grid {grid}: output {tuple(out.shape)}, out_grid says {want}"


def check_connector_tiles_independent(cls: type, d_model: int = 32, in_dim: int = 16, options: dict | None = None,
                                      tol: float = 1e-4) -> None:
    """Each tile's tokens depend on that tile only."""
    connector = _connector(cls, d_model, in_dim, options)
    features = torch.randn(TILES, 4, 4, in_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        together = connector(features)
        alone = torch.cat([connector(features[i:i + 1]) for i in range(TILES)])
    _close(alone, together, "connector output, one tile at a time vs batched", tol)


def check_connector_gradients(cls: type, d_model: int = 32, in_dim: int = 16, options: dict | None = None) -> None:
    """Every parameter and the input get a finite, non-zero gradient."""
    connector = _connector(cls, d_model, in_dim, options).train()
    features = torch.randn(TILES, 4, 4, in_dim).requires_grad_()
    out = connector(features)
    (out * torch.randn_like(out)).sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all(), "input gradient"
    for name, p in connector.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (
            f"parameter '{name}': no finite, non-zero gradient")


ENCODER_CHECKS = (check_encoder_shapes, check_encoder_tiles_independent, check_encoder_gradients)
CONNECTOR_CHECKS = (check_connector_shapes, check_connector_tiles_independent, check_connector_gradients)
