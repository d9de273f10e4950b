"""The two Jamba sizes of issue 20's decode figures, built from the `jamba-small` preset.

``small``: the preset itself (d_model 256, 8 layers, 1 attention : 7 Mamba, MoE every other
layer, vocab 263, tied head): 15.6M parameters. ``large``: the same layout at d_model 1024,
FFNs of 4 * d_model and a 32000-token untied head (the issue's HF Jamba with a real
tokenizer's vocabulary): ~366M parameters.
"""

from __future__ import annotations

import dataclasses

import torch

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.model import HybridLM
from hybrid_mllm.core.presets import resolve_config_path

SIZES = ("small", "large")


def jamba(size: str, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> HybridLM:
    """A random `HybridLM` of `size` ('small' or 'large') in `dtype`, in eval mode."""
    config = load_config(resolve_config_path("jamba-small"))
    if size == "large":
        m = config.model
        ffns = {kind: {**options, "d_hidden": 4 * 1024} for kind, options in m.ffns.items()}
        config.model = dataclasses.replace(m, d_model=1024, vocab_size=32000, tie_embeddings=False, ffns=ffns)
    elif size != "small":
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return build_model(config, seed=seed, dtype=dtype).eval()


def parameters(lm: HybridLM) -> int:
    return sum(p.numel() for p in lm.parameters())
