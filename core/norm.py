"""RMSNorm (Zhang & Sennrich, 2019), the norm of Llama, Mamba and Jamba."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32. x: (..., d_model) -> same shape and dtype."""

    def __init__(self, d_model: int, *, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)  # x / sqrt(mean(x^2) + eps), one op
        return self.weight * normed.to(x.dtype)
