"""`OrtDecoder`: the `Decoder` protocol (prefill, step) over an export's ``decoder.onnx``.

The state is the graph's state tensors as numpy arrays, in the manifest's order; tensors
cross into PyTorch only at the protocol's boundary (CPU tensors viewing numpy memory).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

DEFAULT_PREFILL_CHUNK = 1024  # tokens per decoder call in prefill: bounds the attention scores' memory


class OrtDecoder:
    """The `Decoder` protocol over ``decoder.onnx``. State: tuple of numpy arrays, graph order."""

    def __init__(self, session, manifest: dict, embeddings: np.ndarray, *, prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.session, self.embeddings, self.prefill_chunk = session, embeddings, prefill_chunk
        self.layout = manifest["state"]
        self.dtype = np.dtype(manifest["dtype"])
        self.output_names = ["logits", *[e["output"] for e in self.layout]]

    def initial_state(self, batch: int) -> tuple[np.ndarray, ...]:
        """Zeros, with 0 cached positions on the growing axes."""
        state = []
        for entry in self.layout:
            shape = [batch if d == "batch" else 0 if d == "past_sequence" else d for d in entry["shape"]]
            state.append(np.zeros(shape, dtype=np.dtype(entry["dtype"])))
        return tuple(state)

    def run(self, embeds: np.ndarray, mask: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple]:
        """One graph call: embeds (B, L, d), mask (B, L) bool -> logits (B, vocab), new state."""
        feed = {"inputs_embeds": np.ascontiguousarray(embeds, dtype=self.dtype), "mask": np.ascontiguousarray(mask),
                **{e["input"]: s for e, s in zip(self.layout, state)}}
        logits, *new_state = self.session.run(self.output_names, feed)
        return logits, tuple(new_state)

    def prefill(self, embeds: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
        embeds_np, mask_np = embeds.detach().cpu().numpy(), mask.cpu().numpy().astype(bool)
        state = self.initial_state(embeds_np.shape[0])
        logits = None
        for start in range(0, embeds_np.shape[1], self.prefill_chunk):
            part = slice(start, start + self.prefill_chunk)
            logits, state = self.run(embeds_np[:, part], mask_np[:, part], state)
        if logits is None:
            raise ValueError("prefill needs at least one token")
        return torch.from_numpy(logits.astype(np.float32)), state

    def step(self, token_ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        ids = token_ids.detach().cpu().numpy()  # (B, 1)
        logits, state = self.run(self.embeddings[ids], np.ones(ids.shape, dtype=bool), state)
        return torch.from_numpy(logits.astype(np.float32)), state
