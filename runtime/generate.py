"""Text generation over any runtime: greedy or sampled, stop tokens and strings, streaming.

The loop talks to a `Decoder` (prefill a prompt, then step one token at a time through
the explicit state), so the PyTorch model, ONNX Runtime and TensorRT engines share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.model import HybridLM


@dataclass
class GenerationConfig:
    """max_new_tokens; temperature 0 = greedy; top_k 0 = off; top_p 1 = off; repetition_penalty 1 = off."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None

    def check(self) -> None:
        problems = [msg for bad, msg in (
            (self.max_new_tokens < 0, "max_new_tokens must be >= 0"),
            (self.temperature < 0, "temperature must be >= 0"),
            (self.top_k < 0, "top_k must be >= 0"),
            (not 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.repetition_penalty <= 0, "repetition_penalty must be > 0"),
        ) if bad]
        if problems:
            raise HybridError("bad generation settings: " + "; ".join(problems))


class Decoder(Protocol):
    """What generation needs from a runtime."""

    def prefill(self, embeds: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
        """embeds (B, L, d), mask (B, L) -> last logits (B, vocab), state."""

    def step(self, token_ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        """token_ids (B, 1) -> logits (B, vocab), new state."""


class TorchDecoder:
    """The PyTorch runtime: `HybridLM` with chunked prefill."""

    def __init__(self, lm: HybridLM, *, prefill_chunk: int = 8192):
        self.lm, self.prefill_chunk = lm, prefill_chunk

    @torch.no_grad()
    def prefill(self, embeds: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
        out = self.lm.prefill(inputs_embeds=embeds, mask=mask, chunk_size=self.prefill_chunk)
        return out.logits[:, -1].float(), out.state

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        out = self.lm(token_ids, state=state)
        return out.logits[:, -1].float(), out.state


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated ids per sample, stop token / string excluded
    texts: list[str] | None
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    steps: int = 0
    finished: list[bool] = field(default_factory=list)


def generate(decoder: Decoder, embeds: Tensor, mask: Tensor, config: GenerationConfig, *,
             decode: Callable[[list[int]], str] | None = None, prompt_ids: list[list[int]] | None = None,
             on_token: Callable[[int, int], None] | None = None) -> GenerationResult:
    """Generate from a left-padded prompt batch. `decode` turns ids into text (needed for
    stop strings); `prompt_ids` feed the repetition penalty; `on_token(i, id)` streams."""
    config.check()
    if config.stop_strings and decode is None:
        raise HybridError("stop strings need a tokenizer to decode the generated text")
    gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    batch = embeds.shape[0]
    t0 = time.perf_counter()
    logits, state = decoder.prefill(embeds, mask)
    prefill_s, t1 = time.perf_counter() - t0, time.perf_counter()
    seen = [list(p) for p in prompt_ids] if prompt_ids else [[] for _ in range(batch)]
    tokens, done, steps = [[] for _ in range(batch)], [False] * batch, 0
    for step in range(config.max_new_tokens):
        next_ids = sample_next(logits, config, seen, gen)  # (B,)
        for i, tok in enumerate(next_ids.tolist()):
            if done[i]:
                continue
            if tok in config.stop_token_ids:
                done[i] = True
                continue
            tokens[i].append(tok)
            seen[i].append(tok)
            if on_token is not None:
                on_token(i, tok)
            done[i] = _hit_stop_string(tokens[i], config.stop_strings, decode)
        steps = step + 1
        if all(done) or step == config.max_new_tokens - 1:
            break
        logits, state = decoder.step(next_ids[:, None].to(embeds.device), state)
    texts = [_trim(decode(t), config.stop_strings) for t in tokens] if decode else None
    return GenerationResult(tokens, texts, embeds.shape[1], prefill_s, time.perf_counter() - t1, steps, done)


def sample_next(logits: Tensor, config: GenerationConfig, seen: list[list[int]],
                generator: torch.Generator | None) -> Tensor:
    """logits (B, V) float -> next ids (B,): repetition penalty, then greedy or
    temperature / top-k / top-p sampling."""
    logits = logits.float().cpu().clone()
    if config.repetition_penalty != 1.0:
        for i, ids in enumerate(seen):
            if ids:
                idx = torch.tensor(sorted(set(ids)))
                vals = logits[i, idx]
                logits[i, idx] = torch.where(vals > 0, vals / config.repetition_penalty, vals * config.repetition_penalty)
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits / config.temperature
    if config.top_k:
        kth = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= config.top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def _hit_stop_string(tokens: list[int], stops: tuple[str, ...], decode) -> bool:
    if not stops:
        return False
    tail = decode(tokens[-32:])  # stop strings are short: the recent tokens suffice
    return any(s in tail for s in stops)


def _trim(text: str, stops: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text[:cut] if cut >= 0 else text
