"""The decoder graph: token embeddings + mask + every layer's state -> last logits + new state.

One graph serves prefill (any L) and decode (L = 1): inputs ``inputs_embeds (B, L, d)``,
``mask (B, L)`` bool (False at left padding) and ``past.<layer>.<name>`` for each state
tensor of each mixer (`hybrid_mllm.core.mixer.StateSpec`); outputs ``logits (B, vocab)``
(the last position only: generation needs nothing else, and a (B, L, vocab) output at
long prefills would dwarf everything else) and ``present.<layer>.<name>``. Axes named
``batch``, ``sequence`` and ``past_sequence`` (KV-cache length) are dynamic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from hybrid_mllm.core.model import HybridLM

from .graph import dim_names, export_graph
from .paths import export_paths

BATCH, SEQUENCE, PAST = "batch", "sequence", "past_sequence"
# Example sizes for tracing: all different and >= 2, so no axis can be mistaken for another
# or specialised as a 0/1 size.
EXAMPLE_BATCH, EXAMPLE_LENGTH, EXAMPLE_PAST = 2, 5, 3
# The sequence axis is declared >= 2 to torch.export: PyTorch's matmul decomposition guards
# on "L != 1" when it folds Mamba's transposed projections (a view-or-copy choice, no math),
# which would otherwise abort the export. The ONNX graph has no such choice and no runtime
# check; the parity gate runs it at L = 1 (decode) on every export.
MIN_TRACED_LENGTH = 2


@dataclass(frozen=True)
class StateEntry:
    """One state tensor of the decoder graph, as the manifest describes it."""

    layer: int
    name: str
    input: str  # graph input name, "past.<layer>.<name>"
    output: str  # graph output name, "present.<layer>.<name>"
    shape: list[int | str]  # "batch" and, for a growing state, "past_sequence"
    dtype: str  # numpy dtype name
    seq_dim: int | None  # the axis that grows by L per call (KV caches)

    def to_dict(self) -> dict:
        return asdict(self)


def state_layout(lm: HybridLM) -> list[StateEntry]:
    """Every state tensor in graph order; shapes from each mixer's ``init_state``."""
    entries = []
    for i, block in enumerate(lm.blocks):
        for spec, tensor in zip(block.mixer.state_specs, block.mixer.init_state(1), strict=True):
            shape: list[int | str] = [BATCH, *tensor.shape[1:]]
            if spec.seq_dim is not None:
                shape[spec.seq_dim] = PAST
            entries.append(StateEntry(i, spec.name, f"past.{i}.{spec.name}", f"present.{i}.{spec.name}", shape,
                                      str(tensor.dtype).removeprefix("torch."), spec.seq_dim))
    return entries


class DecoderGraph(nn.Module):
    """``(inputs_embeds, mask, *past) -> (logits, *present)`` around a `HybridLM` (flat state of
    `sizes[i]` tensors for layer i)."""

    def __init__(self, lm: HybridLM, sizes: list[int]):
        super().__init__()
        self.lm, self.sizes = lm, sizes

    def forward(self, inputs_embeds: Tensor, mask: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        """inputs_embeds (B, L, d), mask (B, L) bool, past: flat states -> logits (B, vocab), flat states."""
        state, start = [], 0
        for size in self.sizes:
            state.append(tuple(past[start:start + size]))
            start += size
        out = self.lm(inputs_embeds=inputs_embeds, mask=mask, state=tuple(state), num_logits=1)
        return (out.logits[:, -1], *[t for layer in out.state for t in layer])


def example_inputs(lm: HybridLM, batch: int, length: int, past: int, *, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Random embeds (B, L, d), an all-True mask and random states with `past` cached positions."""
    d_model = lm.embed.embedding_dim
    embeds = torch.randn(batch, length, d_model, generator=generator).to(dtype)
    states = []
    for entry, tensor in zip(state_layout(lm), [t for layer in lm.init_state(batch) for t in layer]):
        shape = list(tensor.shape)
        if entry.seq_dim is not None:
            shape[entry.seq_dim] = past
        states.append(torch.ones(shape, dtype=torch.bool) if tensor.dtype == torch.bool
                      else torch.randn(shape, generator=generator).to(tensor.dtype))
    return embeds, torch.ones(batch, length, dtype=torch.bool), states


def export_decoder(lm: HybridLM, path: Path, *, flavour: str, opset: int, verbose: bool = False) -> dict:
    """Export `lm`, switched to the export paths of `flavour` for the trace, to `path`;
    returns the graph's input/output description for the manifest."""
    layout = state_layout(lm)
    embeds, mask, states = example_inputs(lm, EXAMPLE_BATCH, EXAMPLE_LENGTH, EXAMPLE_PAST,
                                          dtype=lm.embed.weight.dtype)
    batch, past = torch.export.Dim(BATCH), torch.export.Dim(PAST)
    seq = torch.export.Dim(SEQUENCE, min=MIN_TRACED_LENGTH)
    state_dims = tuple({0: batch, **({e.seq_dim: past} if e.seq_dim is not None else {})} for e in layout)
    graph = DecoderGraph(lm, [len(b.mixer.state_specs) for b in lm.blocks])
    with export_paths(lm, flavour) as translations:
        export_graph(
            graph, (embeds, mask, *states), path,
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}, state_dims),
            input_names=["inputs_embeds", "mask", *[e.input for e in layout]],
            output_names=["logits", *[e.output for e in layout]],
            opset=opset, translations=translations, verbose=verbose,
        )
    return dim_names(path)
