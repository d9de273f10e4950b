"""Nemotron-H's MLP: ``down(relu(up(x))^2)``, squared ReLU (So et al., 2021, Primer) and no gate."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Relu2MLP(nn.Module):
    """x: (..., d_model) -> down(relu(up(x))^2): (..., d_model), aux_loss 0."""

    def __init__(self, d_model: int, *, d_hidden: int | None = None, bias: bool = False, device=None, dtype=None):
        super().__init__()
        d_hidden = d_hidden or 4 * d_model
        factory = {"device": device, "dtype": dtype}
        self.up = nn.Linear(d_model, d_hidden, bias=bias, **factory)
        self.down = nn.Linear(d_hidden, d_model, bias=bias, **factory)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.down(torch.relu(self.up(x)).square()), x.new_zeros((), dtype=torch.float32)
