"""Hugging Face causal LMs <-> our checkpoints: dispatch on ``architectures``, match every
tensor by name and shape, then copy them one at a time.

Loading builds the model on the meta device, checks the checkpoint's headers against it
(nothing is read or allocated before every problem has been listed), allocates it once
in the chosen dtype and fills it from the memory-mapped files: peak memory is about one
copy of the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.checkpoint import MAX_SHARD_BYTES, save_checkpoint, unique_state_dict
from hybrid_mllm.core.config import Config, parse_config
from hybrid_mllm.core.errors import ConfigError
from hybrid_mllm.core.model import HybridLM

from ._arch import Architecture, apply_fold, hf_shape
from ._hf_io import (
    HF_CONFIG_FILE,
    ConversionError,
    HFWeights,
    dtype_name,
    parse_dtype,
    read_hf_config,
    write_hf_dir,
)
from ._plan import Plan, check_plan, fill_from_plan
from .bamba import BAMBA
from .falcon_h1 import FALCON_H1
from .granite_hybrid import GRANITE_HYBRID
from .jamba import JAMBA
from .llama import LLAMA
from .mamba import MAMBA
from .mamba2 import MAMBA2
from .nemotron_h import NEMOTRON_H
from .unsupported import UNSUPPORTED

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (JAMBA, MAMBA, LLAMA, MAMBA2, NEMOTRON_H, BAMBA,
                                                                 GRANITE_HYBRID, FALCON_H1)}


def load_hf(src: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
            device: torch.device | str = "cpu") -> tuple[HybridLM, Config]:
    """Read a Hugging Face model directory into our model. Returns (model in eval mode, config).

    dtype: the parameters' dtype (default: as stored); tensors are cast one by one.
    """
    src = Path(src)
    hf = read_hf_config(src)
    arch = _architecture(hf, src)
    config = hf_to_config(hf, arch, source=str(src / HF_CONFIG_FILE), name=src.resolve().name)
    with HFWeights(src) as weights:
        if arch.adapt is not None:
            arch.adapt(weights)
        plan = lm_plan(build_model(config, device="meta"), config, arch)
        check_plan(plan, weights, f"{src} does not match its {HF_CONFIG_FILE} ({arch.name}):",
                   ignorable=lm_ignorable(config, arch))
        dtype = parse_dtype(dtype) or weights.stored_dtype(arch.hf_name("embed.weight", config.model))
        model = build_model(config, device="meta", dtype=dtype).to_empty(device=device)
        if config.model.tie_embeddings:  # to_empty gives each module its own new tensor: tie again
            model.lm_head.weight = model.embed.weight
        fill_from_plan(model.state_dict(), plan, weights)
    if arch.fold is not None:
        apply_fold(model.state_dict(), arch.fold(hf, config.model))
    return model.eval(), config


def convert_hf(src: str | os.PathLike, out: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
               overwrite: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES) -> tuple[Path, Config]:
    """Convert a Hugging Face model directory into our checkpoint directory (atomically)."""
    out = Path(out)
    if out.exists() and not overwrite:  # before the (long) load, not after it
        raise ConversionError(f"{out} already exists: choose another directory or pass --overwrite")
    model, config = load_hf(src, dtype=dtype)
    return save_checkpoint(model, config, out, overwrite=overwrite, max_shard_bytes=max_shard_bytes), config


def save_hf(model: HybridLM, config: Config, out: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
            overwrite: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES) -> tuple[Path, str]:
    """Write our model as a Hugging Face directory that ``AutoModelForCausalLM.from_pretrained``
    loads. Returns (directory, architecture name); raises `ConversionError` listing, for each
    architecture, why the model does not map to it."""
    arch, hf = _hf_config(config)
    dtype = parse_dtype(dtype) or model.embed.weight.dtype
    tensors = {}
    for name, tensor in unique_state_dict(model).items():  # a tied head is stored once, as HF does
        tensor = tensor.detach().to("cpu", dtype).contiguous()
        tensors[arch.hf_name(name, config.model)] = tensor.view(hf_shape(name, tuple(tensor.shape)))
    if arch.pack is not None:
        arch.pack(tensors)
    hf = {"architectures": [arch.name], "model_type": arch.model_type, "dtype": dtype_name(dtype), **hf}
    return write_hf_dir(tensors, hf, Path(out), overwrite=overwrite, max_shard_bytes=max_shard_bytes), arch.name


def hf_to_config(hf: dict[str, Any], arch: Architecture, *, source: str, name: str) -> Config:
    """Our resolved config for a Hugging Face config.json (a `ConversionError` lists what does not map)."""
    problems: list[str] = []
    model = arch.to_ours(hf, problems)
    if problems:
        raise ConversionError(f"{source} ({arch.name}) has settings our model does not support:", problems)
    try:
        return parse_config({"name": name, "model": model}, source=source)
    except ConfigError as e:  # e.g. n_head does not divide d_model: name the HF config, not a YAML path
        raise ConversionError(f"{source} ({arch.name}) does not give a valid model:", e.problems) from None


def _architecture(hf: dict[str, Any], src: Path) -> Architecture:
    entries = hf.get("architectures") or []
    known = [ARCHITECTURES[e] for e in entries if isinstance(e, str) and e in ARCHITECTURES]
    refused = [e for e in entries if isinstance(e, str) and e in UNSUPPORTED]
    if not known and refused:
        raise ConversionError(f"{src / HF_CONFIG_FILE}: {refused[0]} cannot be converted: {UNSUPPORTED[refused[0]]}")
    if not known:
        got = ", ".join(map(str, entries)) or "none (no 'architectures' entry)"
        raise ConversionError(f"{src / HF_CONFIG_FILE}: architectures {got} cannot be converted: "
                              f"supported are {', '.join(ARCHITECTURES)}")
    return known[0]


def lm_plan(model: nn.Module, config: Config, arch: Architecture, rename: Callable[[str], str] = str) -> Plan:
    """Our LM tensor -> its tensor in their checkpoint (named by `arch`, then `rename`d, e.g.
    into a multimodal checkpoint's ``language_model.`` prefix). A tied head is the embedding."""
    return {name: [(rename(arch.hf_name(name, config.model)), hf_shape(name, tuple(tensor.shape)))]
            for name, tensor in unique_state_dict(model).items()}


def lm_ignorable(config: Config, arch: Architecture, rename: Callable[[str], str] = str) -> Callable[[str], bool]:
    """Their tensors the LM may carry and does not read: transformers ties the head itself
    and ignores a stored copy; likewise the architecture's ignored buffers."""
    head = rename("lm_head.weight")
    return lambda n: n.endswith(arch.ignored) or (config.model.tie_embeddings and n == head)


def _hf_config(config: Config) -> tuple[Architecture, dict[str, Any]]:
    """The first architecture our config maps to, and its config.json fields."""
    reasons = []
    for arch in ARCHITECTURES.values():
        problems: list[str] = []
        hf = arch.to_hf(config.model, problems)
        if not problems:
            return arch, hf
        reasons += [f"{arch.name}: {p}" for p in problems]
    raise ConversionError(f"model '{config.name}' does not map to a Hugging Face architecture:", reasons)
