"""Causal grouped-query self-attention with an explicit KV cache (Jamba's attention layer;
Llama's, Bamba's and Falcon-H1's with RoPE, over the whole head or its first ``rotary_dim`` dims)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_mllm.core.decode import dense, fast_decode
from hybrid_mllm.core.mixer import State, StateSpec, padding_mask_or_none

from . import kv_cache


class Attention(nn.Module):
    """Multi-head attention with ``n_kv_head`` key/value heads (GQA), PyTorch SDPA, optional RoPE.

    ``head_dim`` (None: d_model / n_head) sizes the heads: q, o project d_model <-> n_head x head_dim,
    k, v d_model -> n_kv_head x head_dim. With ``rope``, the first ``rotary_dim`` dims of each head
    (None: all of them) are rotated and the rest pass unchanged (Bamba's partial rotary).

    State: ``k, v: (B, n_kv_head, S, head_dim)`` and ``kmask: (B, S)`` bool (which cached
    positions are real tokens); S grows by L on every call. Decoding (`fast_decode`) appends
    to them in place (`kv_cache`) and reads the cache once per step, without repeating its
    heads for the query groups.
    """

    state_specs = (StateSpec("k", seq_dim=2), StateSpec("v", seq_dim=2), StateSpec("kmask", seq_dim=1))

    def __init__(
        self,
        d_model: int,
        *,
        n_head: int = 8,
        n_kv_head: int | None = None,
        rope: bool = False,
        rope_theta: float = 10000.0,
        rotary_dim: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        problem = _check_heads(d_model, n_head, n_kv_head, head_dim, rope, rotary_dim)
        if problem:
            raise ValueError(problem)
        factory = {"device": device, "dtype": dtype}
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim or d_model // n_head
        self.rope, self.rope_theta = rope, rope_theta
        self.rotary_dim = rotary_dim or self.head_dim
        self.q_proj = nn.Linear(d_model, n_head * self.head_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(d_model, n_kv_head * self.head_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(d_model, n_kv_head * self.head_dim, bias=bias, **factory)
        self.o_proj = nn.Linear(n_head * self.head_dim, d_model, bias=bias, **factory)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        device = device or self.q_proj.weight.device
        dtype = dtype or self.q_proj.weight.dtype
        kv = torch.zeros(batch_size, self.n_kv_head, 0, self.head_dim, device=device, dtype=dtype)
        return kv, kv.clone(), torch.zeros(batch_size, 0, device=device, dtype=torch.bool)

    def forward(self, x: Tensor, state: State | None = None, mask: Tensor | None = None) -> tuple[Tensor, State]:
        """x: (B, L, d_model), mask: (B, L) -> y: (B, L, d_model), (k, v, kmask)."""
        batch, length, _ = x.shape
        mask = padding_mask_or_none(mask, x)
        plain = mask is None and state is None  # no cache, no padding: SDPA's causal fast path
        one_token = length == 1 and mask is None and fast_decode()  # a decode step: `_attend_one`
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=x.device)
        past_k, past_v, past_mask = state if state is not None else self.init_state(batch, device=x.device)
        q = dense(self.q_proj, x).view(batch, length, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        k = dense(self.k_proj, x).view(batch, length, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, L, hd)
        v = dense(self.v_proj, x).view(batch, length, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.rope:
            # positions count real tokens only, so left padding does not shift them
            pos = past_mask.sum(-1, keepdim=True) + mask.cumsum(-1) - 1  # (B, L)
            q, k = _rotate(q, pos, self.rope_theta, self.rotary_dim), _rotate(k, pos, self.rope_theta, self.rotary_dim)
        fast = fast_decode()
        append = kv_cache.append if fast else lambda past, new, dim: torch.cat([past, new], dim)
        k, v = append(past_k, k.to(past_k.dtype), 2), append(past_v, v.to(past_v.dtype), 2)
        kmask = append(past_mask, mask, 1)  # (B, S)
        if one_token:
            y = _attend_one(q, k, v, kmask)
            return dense(self.o_proj, y.reshape(batch, 1, -1)), (k, v, kmask)
        k_all, v_all = _repeat_kv(k, self.n_head), _repeat_kv(v, self.n_head)
        if plain:
            y = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=_allowed(kmask, length))
        return dense(self.o_proj, y.transpose(1, 2).reshape(batch, length, -1)), (k, v, kmask)


def _attend_one(q: Tensor, k: Tensor, v: Tensor, kmask: Tensor) -> Tensor:
    """One query per sequence over its cache, each KV head read once for its group of query heads.

    q: (B, H, 1, hd)  k, v: (B, Hkv, S, hd), views into the cache's buffer  kmask: (B, S), True
    at the query's own (last) position -> (B, H, hd). float32: two grouped matmuls; other
    dtypes: SDPA with ``enable_gqa`` (bf16 matmuls copy such strided views first: 5x slower at 8k).
    """
    batch, n_head, _, hd = q.shape
    n_kv = k.shape[1]
    if q.dtype != torch.float32:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=kmask[:, None, None, :], enable_gqa=True)
        return y.reshape(batch, n_head, hd)
    q = q.reshape(batch, n_kv, n_head // n_kv, hd)  # (B, Hkv, G, hd): query heads grouped by KV head
    scores = torch.matmul(q, k.transpose(2, 3)) * hd**-0.5  # (B, Hkv, G, S)
    scores = scores.masked_fill(~kmask[:, None, None, :], float("-inf"))
    return torch.matmul(scores.softmax(-1), v).reshape(batch, n_head, hd)


def _allowed(kmask: Tensor, length: int) -> Tensor:
    """Which keys each query may see: earlier-or-same real tokens, plus itself (so a
    padding query, which sees no real token, still has one key and gives no NaN).

    kmask: (B, S) -> (B, 1, L, S) bool; the L queries are the last L of the S positions.
    """
    total = kmask.shape[1]
    q_pos = torch.arange(length, device=kmask.device)[:, None] + (total - length)  # (L, 1)
    k_pos = torch.arange(total, device=kmask.device)[None, :]  # (1, S)
    return ((k_pos <= q_pos) & kmask[:, None, :] | (k_pos == q_pos))[:, None]


def _repeat_kv(kv: Tensor, n_head: int) -> Tensor:
    """(B, Hkv, S, hd) -> (B, n_head, S, hd), each key/value head shared by a group of queries."""
    batch, n_kv, seq, hd = kv.shape
    return kv[:, :, None].expand(batch, n_kv, n_head // n_kv, seq, hd).reshape(batch, n_head, seq, hd)


def _check_heads(d_model: int, n_head: int, n_kv_head: int, head_dim: int | None, rope: bool,
                 rotary_dim: int | None) -> str | None:
    """The first problem with the head options, naming the option and what it must be, or None."""
    if n_head < 1:
        return f"n_head must be >= 1, got {n_head}"
    if head_dim is None and d_model % n_head:
        return f"n_head ({n_head}) must divide d_model ({d_model}), or set head_dim"
    if head_dim is not None and head_dim < 1:
        return f"head_dim must be >= 1, got {head_dim}"
    if n_kv_head < 1 or n_head % n_kv_head:
        return f"n_kv_head ({n_kv_head}) must divide n_head ({n_head})"
    hd = head_dim or d_model // n_head
    if rotary_dim is not None and not rope:
        return f"rotary_dim ({rotary_dim}) needs rope: true (or remove rotary_dim)"
    if rotary_dim is not None and (rotary_dim < 2 or rotary_dim % 2 or rotary_dim > hd):
        return f"rotary_dim must be even and between 2 and head_dim ({hd}), got {rotary_dim}"
    if rope and rotary_dim is None and hd % 2:
        return f"rope needs an even head_dim, got {hd}; or set an even rotary_dim below it"
    return None


def _rotate(x: Tensor, pos: Tensor, theta: float, rotary_dim: int) -> Tensor:
    """Rotary embedding (half-split layout) of the first `rotary_dim` dims of each head; the
    others pass unchanged. Frequencies theta^(-2i / rotary_dim), i < rotary_dim / 2.

    x: (B, H, L, hd), pos: (B, L) -> (B, H, L, hd)."""
    half = rotary_dim // 2
    inv_freq = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (r/2,)
    angle = pos.float()[:, None, :, None] * inv_freq  # (B, 1, L, r/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.float()[..., :half], x.float()[..., half:rotary_dim]  # (B, H, L, r/2) each
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)  # (B, H, L, r)
    return rotated if rotary_dim == x.shape[-1] else torch.cat([rotated, x[..., rotary_dim:]], dim=-1)
