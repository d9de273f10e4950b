"""`mlp2x_gelu` connector: LLaVA-1.5's two-layer projector."""

from __future__ import annotations

from torch import Tensor, nn


class MLP2xGELU(nn.Module):
    """features: (B, T, in_dim) -> Linear -> GELU -> Linear -> (B, T, d_model)."""

    def __init__(self, d_model: int, *, in_dim: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, d_model, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_model, d_model, device=device, dtype=dtype)

    def num_tokens(self, grid: tuple[int, int]) -> int:
        return grid[0] * grid[1]

    def forward(self, features: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(features)))
