"""The mixer contract: what every sequence mixer (attention, Mamba, plugins) provides.

A mixer is an ``nn.Module`` built as ``cls(d_model, *, <options>, device=None, dtype=None)``:
its keyword-only, annotated options are its YAML schema. It is causal over the sequence
and its state is explicit, so the same module serves training, chunked prefill, token
by token decoding and ONNX export (state in, state out, as plain tensors):

- ``state_specs: tuple[StateSpec, ...]`` names each state tensor and says which of its
  dimensions grows with the sequence (e.g. a KV cache), if any;
- ``init_state(batch_size, *, device=None, dtype=None) -> tuple[Tensor, ...]``: the state
  before the first token (shapes as in ``state_specs``);
- ``forward(x, state=None, mask=None) -> (y, new_state)`` with ``x, y: (B, L, d_model)``,
  ``mask: (B, L)`` bool (True = real token, False = padding; None = all real). Padding must
  not change the state: a padded position leaves the recurrence as it was.

``hybrid_mllm.testing`` checks all of this for any mixer (`MIXER_CHECKS`), and that it exports
(`check_export`; how a mixer exports is its declaration, `hybrid_mllm.core.exportable`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

State = tuple[Tensor, ...]


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of a mixer: its name and the dimension that grows with the
    sequence (None when its size is fixed, as for Mamba's conv and ssm states)."""

    name: str
    seq_dim: int | None = None


def padding_mask_or_none(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """Check a (B, L) padding mask against x: (B, L, d); returns it as bool."""
    if mask is None:
        return None
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (batch, length) = {tuple(x.shape[:2])}")
    return mask.to(torch.bool)
