"""Retention (Sun et al., 2023): linear attention with a fixed decay per head.

Recurrent form, per head: ``S_t = gamma * S_{t-1} + k_t^T v_t``, ``y_t = q_t S_t``.
The full-sequence form weights ``q_t k_s^T`` by ``gamma^(t-s)``; both give the same outputs.
Padding neither decays nor feeds the state (its decay exponent and its k, v are zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from hybrid_mllm.core.mixer import State, StateSpec, padding_mask_or_none


def retain(q: Tensor, k: Tensor, v: Tensor, m: Tensor, log_gamma: Tensor, S0: Tensor) -> tuple[Tensor, Tensor]:
    """The retention of one call, in its full-sequence form.

    q, k, v: (B, H, L, hd) float32, k already scaled; m: (B, L) 1.0 at tokens, 0.0 at padding;
    log_gamma: (H,); S0: (B, H, hd, hd) -> y: (B, H, L, hd), S: (B, H, hd, hd)
    """
    k, v = k * m[:, None, :, None], v * m[:, None, :, None]
    cs = torch.cumsum(m[:, None, :] * log_gamma[None, :, None], dim=-1)  # (B, H, L) log-decay so far
    seg = cs[..., :, None] - cs[..., None, :]  # (B, H, L_t, L_s): log gamma^(t-s), <= 0 below the diagonal
    length = q.shape[2]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp(seg.masked_fill(~causal, float("-inf")))
    y = (q @ k.transpose(-1, -2) * decay) @ v + (q @ S0) * torch.exp(cs)[..., None]
    tail = torch.exp(cs[..., -1:] - cs)  # (B, H, L): decay from s to the end
    S = S0 * torch.exp(cs[..., -1])[..., None, None] + (k * tail[..., None]).transpose(-1, -2) @ v
    return y, S


class Retention(nn.Module):
    """Multi-scale retention. State ``S: (B, n_head, head_dim, head_dim)`` float32."""

    state_specs = (StateSpec("S"),)

    def __init__(self, d_model: int, *, n_head: int = 4, device=None, dtype=None):
        super().__init__()
        if n_head < 1 or d_model % n_head:
            raise ValueError(f"n_head ({n_head}) must divide d_model ({d_model})")
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False, device=device, dtype=dtype)
        self.out = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        # RetNet's decays: gamma_h = 1 - 2^(-5 - h)
        gammas = 1 - 2.0 ** (-5 - torch.arange(n_head, dtype=torch.float32))
        self.register_buffer("log_gamma", torch.log(gammas).to(device), persistent=False)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        device = device or self.qkv.weight.device
        return (torch.zeros(batch_size, self.n_head, self.head_dim, self.head_dim, device=device),)

    def forward(self, x: Tensor, state: State | None = None, mask: Tensor | None = None) -> tuple[Tensor, State]:
        """x: (B, L, d_model) -> y: (B, L, d_model), (S,)."""
        return self.mix(x, state, mask, retain=retain)

    def mix(self, x: Tensor, state: State | None, mask: Tensor | None, *, retain: Callable) -> tuple[Tensor, State]:
        """`forward` with the retention given (`retain`, or the export's single op: `export`)."""
        batch, length, d_model = x.shape
        mask = padding_mask_or_none(mask, x)
        m = torch.ones(batch, length, device=x.device) if mask is None else mask.float()
        (S0,) = state if state is not None else self.init_state(batch, device=x.device)
        q, k, v = (t.view(batch, length, self.n_head, self.head_dim).transpose(1, 2).float()
                   for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, L, hd)
        y, S = retain(q, k / math.sqrt(self.head_dim), v, m, self.log_gamma, S0)
        return self.out(y.transpose(1, 2).reshape(batch, length, d_model).to(x.dtype)), (S,)
