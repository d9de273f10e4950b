"""Causal depthwise conv1d with an explicit state (the last d_conv - 1 inputs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """Depthwise causal convolution continuing from `conv_state`.

    x: (B, D, L)  weight: (D, K)  bias: (D,)  conv_state: (B, D, K-1), the inputs before x
    -> y: (B, D, L), new conv_state: (B, D, K-1)
    """
    kernel = weight.shape[-1]
    x_full = torch.cat([conv_state.to(x.dtype), x], dim=-1)  # (B, D, K-1+L)
    y = F.conv1d(x_full, weight[:, None, :], bias, groups=weight.shape[0])  # (B, D, L)
    return y, x_full[:, :, x_full.shape[-1] - (kernel - 1):]
