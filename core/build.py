"""Model assembly: a validated `Config` -> modules from the registry."""

from __future__ import annotations

import torch

from .config import FFN_KINDS, Config
from .model import Block, HybridLM
from .registry import Registry, get_registry


def build_model(config: Config, *, registry: Registry | None = None, device=None,
                dtype: torch.dtype | None = None, seed: int | None = None) -> HybridLM:
    """Build the language model a config describes (random initialisation from `seed`)."""
    registry = registry or get_registry()
    m = config.model
    if seed is not None:
        torch.manual_seed(seed)
    factory = {"device": device, "dtype": dtype}
    blocks = []
    for mixer_name, ffn_kind in zip(m.layers, m.ffn_layers, strict=True):
        mixer = registry.get("mixer", mixer_name)(m.d_model, **m.mixers[mixer_name], **factory)
        ffn = None if ffn_kind == "none" else FFN_KINDS[ffn_kind](m.d_model, **getattr(m, ffn_kind), **factory)
        blocks.append(Block(m.d_model, mixer, ffn, norm_eps=m.norm_eps, **factory))
    return HybridLM(m.vocab_size, m.d_model, blocks, norm_eps=m.norm_eps,
                    tie_embeddings=m.tie_embeddings, **factory)
