"""Token-reducing connectors for video frames and very large images.

`pool`: 2-D average (or bilinear) pooling of the feature grid by ``stride``, then LLaVA's
MLP. `conv`: a strided 2-D convolution, then the MLP (MMJamba's video adapter is a 2-D
conv). Both cut the tokens per tile or frame by about ``stride**2``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn


def _pooled(size: int, stride: int) -> int:
    return math.ceil(size / stride)


class Pool(nn.Module):
    """features (N, gh, gw, in_dim) -> pool by stride -> MLP -> (N, ceil(gh/s), ceil(gw/s), d_model)."""

    def __init__(self, d_model: int, *, in_dim: int, stride: int = 2, mode: Literal["avg", "bilinear"] = "avg",
                 device=None, dtype=None):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride, self.mode = stride, mode
        self.fc1 = nn.Linear(in_dim, d_model, device=device, dtype=dtype)
        self.fc2 = nn.Linear(d_model, d_model, device=device, dtype=dtype)

    def out_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return _pooled(grid[0], self.stride), _pooled(grid[1], self.stride)

    def forward(self, features: Tensor) -> Tensor:
        x = features.permute(0, 3, 1, 2)  # (N, in_dim, gh, gw)
        if self.mode == "avg":
            x = F.avg_pool2d(x, self.stride, ceil_mode=True, count_include_pad=False)
        else:
            x = F.interpolate(x, size=self.out_grid(tuple(x.shape[-2:])), mode="bilinear", align_corners=False)
        x = x.permute(0, 2, 3, 1)  # (N, gh', gw', in_dim)
        return self.fc2(F.gelu(self.fc1(x)))


class Conv(nn.Module):
    """features (N, gh, gw, in_dim) -> Conv2d(kernel = stride = s) -> GELU -> Linear -> (N, gh', gw', d_model)."""

    def __init__(self, d_model: int, *, in_dim: int, stride: int = 2, device=None, dtype=None):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.conv = nn.Conv2d(in_dim, d_model, stride, stride=stride, device=device, dtype=dtype)
        self.fc = nn.Linear(d_model, d_model, device=device, dtype=dtype)

    def out_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return _pooled(grid[0], self.stride), _pooled(grid[1], self.stride)

    def forward(self, features: Tensor) -> Tensor:
        x = features.permute(0, 3, 1, 2)  # (N, in_dim, gh, gw)
        gh, gw = self.out_grid(tuple(x.shape[-2:]))
        x = F.pad(x, (0, gw * self.stride - x.shape[-1], 0, gh * self.stride - x.shape[-2]))  # ceil, like pooling
        return self.fc(F.gelu(self.conv(x).permute(0, 2, 3, 1)))
