"""`linear` connector: one projection from vision features to the LM width."""

from __future__ import annotations

from torch import Tensor, nn


class Linear(nn.Module):
    """features: (B, T, in_dim) -> (B, T, d_model). Emits as many tokens as it receives."""

    def __init__(self, d_model: int, *, in_dim: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model, device=device, dtype=dtype)

    def num_tokens(self, grid: tuple[int, int]) -> int:
        return grid[0] * grid[1]

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(features)
