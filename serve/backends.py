"""What the engine runs on: the PyTorch model, or an ONNX export in ONNX Runtime.

A backend embeds a prompt, prefills it a chunk at a time from its own state, steps a batch
one token, and joins / drops sequences of a batch state (`slots`). Both keep each state
tensor's growing axis from the model's declaration: the mixers' `StateSpec` for PyTorch, the
export manifest's ``past_sequence`` axis for ONNX Runtime.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from hybrid_mllm.runtime.splice import embed

from . import slots


class TorchBackend:
    """A `HybridMLLM` (eval mode) through `HybridLM.forward` with explicit state."""

    def __init__(self, model):
        self.model, self.specs = model, slots.state_specs(model.lm)

    def embed(self, ids: list[int], items: list) -> Tensor:
        """-> embeds (1, L, d): the prompt with its visual tokens spliced in."""
        return embed(self.model, [torch.tensor(ids)], [items]).embeds

    def prefill(self, embeds: Tensor, state: Any) -> tuple[Tensor, Any]:
        """embeds (1, l, d) from `state` (None: the start) -> last logits (1, V), new state."""
        out = self.model.lm(inputs_embeds=embeds, state=state, num_logits=1)
        return out.logits[:, -1], out.state

    def step(self, token_ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        """token_ids (B, 1) -> logits (B, V), new state."""
        out = self.model.lm(token_ids, state=state)
        return out.logits[:, -1], out.state

    def join(self, batch: Any, state: Any) -> Any:
        return slots.join(batch, state, self.specs)

    def keep(self, batch: Any, rows: list[int]) -> Any:
        return slots.keep(batch, rows)


class OrtBackend:
    """An export directory's decoder graph (`OrtDecoder`) and vision graphs (`OrtMLLM`)."""

    def __init__(self, model, decoder):
        self.model, self.decoder = model, decoder
        self.seq_axes = [entry["shape"].index("past_sequence") if "past_sequence" in entry["shape"] else None
                         for entry in decoder.layout]

    def embed(self, ids: list[int], items: list) -> Tensor:
        return embed(self.model, [torch.tensor(ids)], [items]).embeds

    def prefill(self, embeds: Tensor, state: Any) -> tuple[Tensor, Any]:
        state = self.decoder.initial_state(1) if state is None else state
        x = embeds.detach().cpu().numpy()
        logits, state = self.decoder.run(x, np.ones(x.shape[:2], dtype=bool), state)
        return torch.from_numpy(logits.astype(np.float32)), state

    def step(self, token_ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        return self.decoder.step(token_ids, state)

    def join(self, batch: Any, state: Any) -> Any:
        if batch is None:
            return state
        return tuple(_cat(a, b, axis) for a, b, axis in zip(batch, state, self.seq_axes, strict=True))

    def keep(self, batch: Any, rows: list[int]) -> Any:
        return tuple(t[rows] for t in batch) if rows else None


def _cat(a: np.ndarray, b: np.ndarray, axis: int | None) -> np.ndarray:
    """Batch rows of `a` and `b`, zeros in front along `axis` up to the longer cache."""
    if axis is not None and a.shape[axis] != b.shape[axis]:
        length = max(a.shape[axis], b.shape[axis])
        a, b = (np.pad(t, [(length - t.shape[axis], 0) if d == axis else (0, 0) for d in range(t.ndim)])
                for t in (a, b))
    return np.concatenate([a, b], axis=0)
