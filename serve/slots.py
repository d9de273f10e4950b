"""The running decode batch's state: sequences join and leave it between steps.

A hybrid's per-sequence state is mostly fixed in size (Mamba's conv and SSM states), with a
cache that grows only in the few attention layers. Each mixer declares which dimension of
each state tensor grows (`StateSpec.seq_dim`), so the batch is one tuple of tensors per layer
with the sequences along dim 0: a joining sequence is padded (at the front, with zeros) or
pads the batch to the longest cache, then concatenated; a leaving one is dropped by indexing.
Both happen between decode steps, never per step. A zero-filled front along `seq_dim` must
read as "no token there": attention's ``kmask`` says so for its cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid_mllm.core.mixer import StateSpec
from hybrid_mllm.core.model import HybridLM, ModelState


def state_specs(lm: HybridLM) -> tuple[tuple[StateSpec, ...], ...]:
    """Each layer's state layout, as its mixer declares it."""
    return tuple(block.mixer.state_specs for block in lm.blocks)


def join(batch: ModelState | None, state: ModelState, specs) -> ModelState:
    """`batch` (B sequences) + `state` (1 or more) -> B + n sequences, caches padded to the longest."""
    if batch is None:
        return state
    return tuple(tuple(_cat(a, b, spec.seq_dim) for a, b, spec in zip(layer_a, layer_b, layer_specs, strict=True))
                 for layer_a, layer_b, layer_specs in zip(batch, state, specs, strict=True))


def keep(batch: ModelState, rows: list[int]) -> ModelState | None:
    """The sequences at `rows` of `batch`, in that order (None when no row is left)."""
    if not rows:
        return None
    index = torch.tensor(rows, device=batch[0][0].device)
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in batch)


def _cat(a: Tensor, b: Tensor, seq_dim: int | None) -> Tensor:
    if seq_dim is not None and a.shape[seq_dim] != b.shape[seq_dim]:
        length = max(a.shape[seq_dim], b.shape[seq_dim])
        a, b = _pad_front(a, seq_dim, length), _pad_front(b, seq_dim, length)
    return torch.cat([a, b], dim=0)


def _pad_front(t: Tensor, dim: int, length: int) -> Tensor:
    """Zeros before the data along `dim` up to `length`."""
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]  # F.pad lists dims from the last
    return F.pad(t, pad)
