"""`mlp2x_gelu` connector: LLaVA-1.5's two-layer projector."""

from __future__ import annotations

from torch import Tensor, nn


class MLP2xGELU(nn.Module):
    """features (N, gh, gw, in_dim) -> Linear -> GELU -> Linear -> (N, gh, gw, d_model)."""

    def __init__(self, d_model: int, *, in_dim: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, d_model, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_model, d_model, device=device, dtype=dtype)

    def out_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return grid

    def forward(self, features: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(features)))
