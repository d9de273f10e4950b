"""The engine's parity gate: the ONNX gate's chains (`hybrid_mllm.export.onnx.parity`) run on a
decoder engine through `TrtSession`, clamped to the engine's profiles (`parity_chains`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from hybrid_mllm.runtime.trt import profiles
from hybrid_mllm.runtime.trt.engine import TrtDecoder

from .errors import EngineBuildError

ORT_TYPES = {torch.float32: "tensor(float)", torch.float16: "tensor(float16)", torch.bool: "tensor(bool)"}


class _Input(NamedTuple):
    name: str
    type: str


class TrtSession:
    """The slice of ``onnxruntime.InferenceSession`` the parity gate uses, over a decoder engine
    (numpy in and out; calls longer than the profile's max length run in chunks)."""

    def __init__(self, decoder: TrtDecoder):
        self.decoder = decoder

    def get_inputs(self) -> list[_Input]:
        engine = self.decoder.engine
        return [_Input(n, ORT_TYPES.get(engine.dtypes[n], "tensor(float)")) for n in engine.inputs]

    def run(self, names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        d = self.decoder
        embeds = torch.from_numpy(feed["inputs_embeds"]).to("cuda", torch.float32)
        mask = torch.from_numpy(feed["mask"]).to("cuda")
        state = tuple(torch.from_numpy(np.ascontiguousarray(feed[e["input"]])).to("cuda") for e in d.layout)
        with torch.no_grad():
            for start, stop in profiles.prefill_chunks(embeds.shape[1], d.limits.max_seq):
                logits, state = d.run(embeds[:, start:stop], mask[:, start:stop], state)
        return [logits.float().cpu().numpy(), *[s.cpu().numpy() for s in state]]


def parity_chains(chains, limits: profiles.ProfileLimits) -> tuple:
    """The gate's chains (name, batch, padding, lengths) clamped to the profiles: batch to max
    batch, lengths cut so all tokens fit in max past (lengths above max seq run in chunks).
    A chain left with one call checks no carried state and is dropped; raises `EngineBuildError`
    when none is left."""
    kept = []
    for name, batch, padding, lengths in chains:
        lengths = _fit_lengths(lengths, limits.max_past)
        if len(lengths) >= 2:
            kept.append((name, min(batch, limits.max_batch), min(padding, lengths[0] - 1), lengths))
    if not kept:
        raise EngineBuildError(f"the engine limits leave no parity check: raise --max-past (now {limits.max_past}) "
                               "to at least 2 so a prefill and a decode step fit")
    return tuple(kept)


def _fit_lengths(lengths: tuple[int, ...], budget: int) -> tuple[int, ...]:
    """`lengths` cut to sum to at most `budget`, keeping a token for each later call while it fits."""
    out = []
    for i, length in enumerate(lengths):
        left = budget - sum(out)
        if left < 1:
            break
        out.append(max(1, min(length, left - (len(lengths) - i - 1))))
    return tuple(out)
