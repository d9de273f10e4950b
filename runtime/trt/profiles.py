"""Optimization profiles of the decoder engine, and which one a call uses (plain Python).

The decoder graph has three dynamic axes (`hybrid_mllm.export.onnx.decoder`): ``batch``,
``sequence`` (tokens in this call) and ``past_sequence`` (the attention layers' cached
positions). TensorRT tunes kernels per profile, so the engine gets two:

- ``prefill`` (index 0): batch 1..max_batch, sequence 1..max_seq with its optimum at a long
  length (``opt_seq``, default max_seq: the prompt chunks that dominate prefill time), no
  cached positions at the optimum;
- ``decode`` (index 1): sequence exactly 1, the optimum at ``opt_seq`` cached positions.

Both allow 0..max_past cached positions, so a prompt is prefilled in chunks of at most
max_seq tokens with the state carried, and decoding continues to max_past in total.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from hybrid_mllm.core.errors import HybridError

PREFILL, DECODE = 0, 1
BATCH, SEQUENCE, PAST = "batch", "sequence", "past_sequence"


@dataclass(frozen=True)
class ProfileLimits:
    """The shapes an engine accepts (a user choice at build time)."""

    max_batch: int = 4
    max_seq: int = 2048
    max_past: int = 8192
    opt_batch: int = 1
    opt_seq: int | None = None  # None: max_seq

    def check(self) -> None:
        opt_seq = self.max_seq if self.opt_seq is None else self.opt_seq
        problems = [msg for bad, msg in (
            (self.max_batch < 1, "max batch must be >= 1"),
            (self.max_seq < 1, "max sequence must be >= 1"),
            (self.max_past < self.max_seq, "max past (cached positions) must be >= max sequence"),
            (not 1 <= self.opt_batch <= self.max_batch, "opt batch must be in 1..max batch"),
            (not 1 <= opt_seq <= self.max_seq, "opt sequence must be in 1..max sequence"),
        ) if bad]
        if problems:
            raise HybridError("bad TensorRT profile limits: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Profile:
    """One optimization profile: input name -> (min, opt, max) shapes."""

    name: str
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def decoder_profiles(inputs: Sequence[dict], limits: ProfileLimits) -> list[Profile]:
    """The prefill and decode profiles for the decoder graph's `inputs` (manifest entries:
    name, shape of ints and axis names)."""
    limits.check()
    opt_seq = limits.max_seq if limits.opt_seq is None else limits.opt_seq
    ranges = {
        "prefill": {BATCH: (1, limits.opt_batch, limits.max_batch), SEQUENCE: (1, opt_seq, limits.max_seq),
                    PAST: (0, 0, limits.max_past)},
        "decode": {BATCH: (1, limits.opt_batch, limits.max_batch), SEQUENCE: (1, 1, 1),
                   PAST: (0, min(opt_seq, limits.max_past), limits.max_past)},
    }
    profiles = []
    for name, axes in ranges.items():
        shapes = {}
        for entry in inputs:
            dims = []
            for dim in entry["shape"]:
                if isinstance(dim, int):
                    dims.append((dim, dim, dim))
                elif dim in axes:
                    dims.append(axes[dim])
                else:
                    raise HybridError(f"decoder input {entry['name']!r} has an axis {dim!r} that no TensorRT profile "
                                      f"covers (known: {', '.join(axes)}); re-export with this version")
            shapes[entry["name"]] = tuple(tuple(d[i] for d in dims) for i in range(3))
        profiles.append(Profile(name, shapes))
    return profiles


def choose_profile(length: int) -> int:
    """The profile for a call with `length` new tokens: decode for one token, else prefill."""
    return DECODE if length == 1 else PREFILL


def prefill_chunks(length: int, max_seq: int) -> list[tuple[int, int]]:
    """(start, stop) of each engine call for a `length`-token prompt, at most max_seq each."""
    if length < 1:
        raise ValueError("prefill needs at least one token")
    return [(start, min(start + max_seq, length)) for start in range(0, length, max_seq)]


def check_fits(batch: int, past: int, length: int, limits: ProfileLimits) -> None:
    """A call the engine's profiles accept, or a one-line error saying which limit to raise."""
    if batch > limits.max_batch:
        raise HybridError(f"batch {batch} is larger than the engine's max batch {limits.max_batch}: "
                          "rebuild with hybrid-export --trt --max-batch N")
    if past + length > limits.max_past:
        raise HybridError(f"{past + length} tokens in total (prompt and answer) exceed the engine's max "
                          f"{limits.max_past}: rebuild with hybrid-export --trt --max-past N, or ask for fewer tokens")
