"""Which converter a Hugging Face directory needs, from its config.json.

``architectures`` decides; a config.json without it falls back on ``model_type``. The
kinds: ``lm`` (a causal LM -> our checkpoint), ``llava`` (LLaVA / LLaVA-NeXT -> our
multimodal checkpoint), ``vision`` (a CLIP / SigLIP tower -> timm-named encoder weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._hf_io import HF_CONFIG_FILE, ConversionError
from .hf_lm import ARCHITECTURES
from .hf_vision import VISION_ARCHITECTURES, VISION_MODEL_TYPES
from .llava import LLAVA_ARCHITECTURES

KINDS = {**dict.fromkeys(ARCHITECTURES, "lm"), **dict.fromkeys(LLAVA_ARCHITECTURES, "llava"),
         **dict.fromkeys(VISION_ARCHITECTURES, "vision")}
MODEL_TYPES = {**dict.fromkeys(VISION_MODEL_TYPES, "vision"), "llava": "llava", "llava_next": "llava"}


def hf_kind(hf: dict[str, Any], src: Path) -> str:
    """"lm", "llava" or "vision"; a `ConversionError` lists every supported architecture."""
    entries = hf.get("architectures") or []
    for entry in entries:
        if isinstance(entry, str) and entry in KINDS:
            return KINDS[entry]
    model_type = hf.get("model_type")
    if not entries and isinstance(model_type, str) and model_type in MODEL_TYPES:  # a list is unhashable
        return MODEL_TYPES[hf["model_type"]]
    got = ", ".join(map(str, entries)) or f"none (no 'architectures' entry; model_type {hf.get('model_type')!r})"
    raise ConversionError(f"{src / HF_CONFIG_FILE}: architectures {got} cannot be converted: supported are "
                          f"{', '.join(KINDS)}")
