"""Model assembly: a validated `Config` -> modules from the registry."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import NO_FFN, NO_MIXER, Config
from .errors import ConfigError
from .mllm import HybridMLLM
from .model import Block, HybridLM
from .registry import Registry, get_registry
from .text import Tokenizer, load_tokenizer


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
        mixer = None if mixer_name == NO_MIXER else registry.get("mixer", mixer_name)(
            m.d_model, **m.mixers[mixer_name], **factory)
        ffn = None if ffn_kind == NO_FFN else registry.get("ffn", ffn_kind)(m.d_model, **m.ffns[ffn_kind], **factory)
        blocks.append(Block(m.d_model, mixer, ffn, norm_eps=m.norm_eps, residual_multiplier=m.residual_multiplier,
                            **factory))
    return HybridLM(m.vocab_size, m.d_model, blocks, norm_eps=m.norm_eps, tie_embeddings=m.tie_embeddings,
                    embedding_multiplier=m.embedding_multiplier, logits_multiplier=m.logits_multiplier, **factory)


def build_mllm(config: Config, *, registry: Registry | None = None, device=None, dtype: torch.dtype | None = None,
               seed: int | None = None, base_dir: str | Path | None = None) -> tuple[HybridMLLM, Tokenizer]:
    """Build the multimodal model (the LM plus, with a ``vision:`` section, encoder and
    connectors) and its tokenizer (paths relative to `base_dir`)."""
    registry = registry or get_registry()
    tokenizer = load_tokenizer(config.text.tokenizer, base_dir=base_dir)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ConfigError("model.vocab_size", [f"model.vocab_size: {config.model.vocab_size} is smaller than the "
                                               f"tokenizer's vocabulary ({tokenizer.vocab_size})"])
    factory = {"device": device, "dtype": dtype}
    lm = build_model(config, registry=registry, seed=seed, **factory)
    parts = {}
    if config.vision is not None:
        v, d_model = config.vision, config.model.d_model
        parts["encoder"] = _component(registry, "encoder", v.encoder, (), {}, factory)
        for key in ("connector", "video_connector"):
            parts[key] = _component(registry, "connector", getattr(v, key), (d_model,),
                                    {"in_dim": parts["encoder"].out_dim}, factory)
    v = config.vision
    model = HybridMLLM(lm, **parts, image_token_id=tokenizer.image_id, video_token_id=tokenizer.video_id,
                       newline=v.newline if v else False, grid_pos=v.grid_pos if v else False)
    return model, tokenizer


def _component(registry: Registry, kind: str, spec: dict, args: tuple, extra: dict, factory: dict):
    options = {k: v for k, v in spec.items() if k != "name"}
    return registry.get(kind, spec["name"])(*args, **options, **extra, **factory)
