"""Shared by the fused decode step tests: the jamba-small model, stepped logits, spies on the
registered block steps and switching some of them off."""

from __future__ import annotations

import dataclasses

import torch

from hybrid_mllm.core import decode
from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.decode import decode_paths
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.plugins.mixers import block_cpu, model_cpu, stack_cpu

PARTS = ("mixer", "ffn", "stack", "model")


def spy_steps(monkeypatch) -> dict[str, int]:
    """Counts of the fused calls per part (`PARTS`), kept by spies on the registered steps."""
    counts = dict.fromkeys(PARTS, 0)
    registered = {part: decode._block_steps(part) for part in counts}
    assert block_cpu.CPU_FFN in registered["ffn"] and block_cpu.CPU_MAMBA in registered["mixer"]
    assert block_cpu.CPU_ATTENTION in registered["mixer"] and stack_cpu.CPU_STACK in registered["stack"]
    assert model_cpu.CPU_MODEL in registered["model"]

    def spy(step):
        def fn(*args):
            counts[step.part] += 1
            return step.fn(*args)
        return dataclasses.replace(step, fn=fn)

    spies = {part: tuple(spy(s) for s in steps) for part, steps in registered.items()}
    monkeypatch.setattr(decode, "_block_steps", lambda part: spies[part])
    return counts


def jamba(dtype=torch.float32, **changes):
    """The jamba-small preset (vocab 263), seed 0, in eval mode; `changes` to its model config."""
    config = load_config(resolve_config_path("jamba-small"))
    config.model = dataclasses.replace(config.model, **changes)
    return build_model(config, seed=0, dtype=dtype).eval()


def decode_logits(lm, ids: torch.Tensor, prompt: int, **paths) -> torch.Tensor:
    """Logits (B, L - prompt + 1, vocab) after prefilling `prompt` tokens, then stepping the rest."""
    with torch.no_grad(), decode_paths(fast=True, **paths):
        out = lm.prefill(ids[:, :prompt], chunk_size=8)
        state, logits = out.state, [out.logits[:, -1]]
        for i in range(prompt, ids.shape[1]):
            out = lm(ids[:, i:i + 1], state=state)
            state = out.state
            logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


def fast_and_generic(lm, ids: torch.Tensor, state) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of one step of `ids` (B, 1) from `state`, on the decode paths and on the general forward."""
    with torch.no_grad():
        fast = lm(ids, state=state).logits
        with decode_paths(fast=False):
            generic = lm(ids, state=state).logits
    return fast, generic


def without(parts: tuple[str, ...], fn):
    """fn() with the registered steps of `parts` off."""
    saved = decode._block_steps
    decode._block_steps = lambda part: () if part in parts else saved(part)
    try:
        return fn()
    finally:
        decode._block_steps = saved
