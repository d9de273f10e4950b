"""`linear` connector: one projection from vision features to the LM width."""

from __future__ import annotations

from torch import Tensor, nn


class Linear(nn.Module):
    """features (N, gh, gw, in_dim) -> (N, gh, gw, d_model): one token per patch."""

    def __init__(self, d_model: int, *, in_dim: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model, device=device, dtype=dtype)

    def out_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return grid

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(features)
