"""A Hugging Face LLaVA / LLaVA-NeXT directory -> our `HybridMLLM` checkpoint, in one step.

```
LlavaForConditionalGeneration / LlavaNextForConditionalGeneration   ours
vision_tower (CLIP or SigLIP), hidden_states[vision_feature_layer]  encoder: timm, feature_layer
multi_modal_projector linear_1 -> gelu -> linear_2                  connector: mlp2x_gelu (fc1, fc2)
language_model (Llama, or any causal LM hf_lm converts: Mamba-2,     lm: HybridLM
  Nemotron-H, Bamba, Granite-4.0-H, Falcon-H1, Jamba, Mamba; by its
  model_type; without the multipliers LLaVA skips: `llava_ignores`)
image_newline (NeXT)                                                image_newline
image_grid_pinpoints (NeXT, [height, width] as transformers reads)  vision.pinpoints ([width, height])
```
LLaVA-NeXT's image layout is ours: the thumbnail's tokens, then the unpadded tile grid
with a newline embedding after each row, cut by LLaVA-NeXT's own rule (``vision.unpad:
llava``). Plain LLaVA (1.5) gives an image only the thumbnail's tokens: our ``vision.layout:
single``, no newline. So a converted model sees LLaVA's tokens; the weights, features,
projector and LM are LLaVA's exactly. Our video path has no LLaVA counterpart: the video
connector (pool, stride 2) starts from the projector's weights, the frame separator is random.
Both loaders accept the checkpoint layouts of transformers 4.x (``language_model.model.``,
``vision_tower.vision_model.``) and 5.x (``model.language_model.``, ``model.vision_tower.``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import MAX_SHARD_BYTES, save_checkpoint
from hybrid_mllm.core.config import Config, parse_config
from hybrid_mllm.core.errors import ConfigError
from hybrid_mllm.core.mllm import HybridMLLM
from hybrid_mllm.core.schema import is_int
from hybrid_mllm.core.text import Tokenizer

from ._hf_io import HF_CONFIG_FILE, ConversionError, HFWeights, parse_dtype, read_hf_config
from ._arch import Architecture, apply_fold
from ._plan import Plan, check_plan, fill_from_plan
from .hf_lm import ARCHITECTURES, lm_ignorable, lm_plan
from .hf_vision import encoder_options, family_of, timm_plan, vision_ignorable

LLAVA_ARCHITECTURES = {"LlavaForConditionalGeneration": "llava", "LlavaNextForConditionalGeneration": "llava_next"}
TEXT_ARCHITECTURES = {a.model_type: a for a in ARCHITECTURES.values()}  # text_config.model_type -> its converter
TOKENIZER_FILE = "tokenizer.json"
VIDEO_CONNECTOR = {"name": "pool", "stride": 2}
# where each part lives: transformers 4.x layout first, then 5.x
VISION_PREFIXES = ("vision_tower.vision_model.", "vision_tower.",
                   "model.vision_tower.vision_model.", "model.vision_tower.")
LM_PREFIXES = {"language_model.model.": "language_model.lm_head.", "model.language_model.": "lm_head."}
PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")


def load_llava(src: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
               device: torch.device | str = "cpu") -> tuple[HybridMLLM, Tokenizer, Config]:
    """Read a LLaVA / LLaVA-NeXT directory into our multimodal model (eval mode). The
    tokenizer is the directory's ``tokenizer.json`` when it has one, else our byte tokenizer."""
    src = Path(src)
    hf = read_hf_config(src)
    config, arch = llava_config(hf, src)
    try:
        meta, tokenizer = build_mllm(config, device="meta", base_dir=src)
    except ConfigError as e:  # e.g. a tokenizer larger than the LM's vocabulary
        raise ConversionError(f"{src} does not give a valid model:", e.problems) from None
    with HFWeights(src) as weights:
        plan, ignorable = _plan(meta, config, weights, _text_arch(hf))
        check_plan(plan, weights, f"{src} does not match its {HF_CONFIG_FILE} ({arch}):", ignorable=ignorable)
        dtype = parse_dtype(dtype) or weights.stored_dtype(plan["lm.embed.weight"][0][0])
        model, _ = build_mllm(config, device="meta", dtype=dtype, base_dir=src)
        model = model.to_empty(device=device)
        if config.model.tie_embeddings:  # to_empty gives each module its own new tensor: tie again
            model.lm.lm_head.weight = model.lm.embed.weight
        fill_from_plan(model.state_dict(), plan, weights)
    text_arch = _text_arch(hf)
    if text_arch.fold is not None:
        apply_fold(model.state_dict(), text_arch.fold(hf.get("text_config") or {}, config.model), prefix="lm.")
    with torch.no_grad():  # the one tensor LLaVA has no counterpart of, initialised as HybridMLLM does
        generator = torch.Generator(model.frame_separator.device).manual_seed(0)
        model.frame_separator.normal_(0.0, 0.02, generator=generator)
    return model.eval(), tokenizer, config


def convert_llava(src: str | os.PathLike, out: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                  overwrite: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES) -> tuple[Path, Config]:
    """Convert a LLaVA / LLaVA-NeXT directory into our checkpoint directory (atomically)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConversionError(f"{out} already exists: choose another directory or pass --overwrite")
    model, tokenizer, config = load_llava(src, dtype=dtype)
    return save_checkpoint(model, config, out, tokenizer=tokenizer, overwrite=overwrite,
                           max_shard_bytes=max_shard_bytes), config


def llava_config(hf: dict[str, Any], src: Path) -> tuple[Config, str]:
    """(our resolved config, the architecture) for a LLaVA config.json; one `ConversionError`
    lists what does not map."""
    source = str(src / HF_CONFIG_FILE)
    arch = next((a for a in hf.get("architectures") or [] if a in LLAVA_ARCHITECTURES), None)
    if arch is None:
        raise ConversionError(f"{source}: architectures {', '.join(hf.get('architectures') or ['none'])} is not "
                              f"LLaVA: supported are {', '.join(LLAVA_ARCHITECTURES)}")
    problems: list[str] = []
    text, vision = hf.get("text_config") or {}, hf.get("vision_config") or {}
    if text.get("model_type", "llama") not in TEXT_ARCHITECTURES:
        problems.append(f"text_config.model_type: {text['model_type']!r} is not supported: the language model "
                        f"must be one of {', '.join(TEXT_ARCHITECTURES)}")
    text_problems: list[str] = []
    ignored = _text_arch(hf).llava_ignores  # e.g. a logits multiplier: LLaVA's own lm_head has none
    model = _text_arch(hf).to_ours({k: v for k, v in text.items() if k not in ignored}, text_problems)
    problems += [f"text_config.{p}" for p in text_problems]
    _check_feature_select(hf, family_of(vision, source).class_token, problems)
    layer = hf.get("vision_feature_layer", -2)
    if not is_int(layer) or layer == 0:
        problems.append(f"vision_feature_layer: {layer!r} is not supported: give one block (an int other than 0)")
        layer = -2
    if hf.get("projector_hidden_act", "gelu") != "gelu" or not hf.get("multimodal_projector_bias", True):
        problems.append("multi_modal_projector: only Linear -> gelu -> Linear with biases (our mlp2x_gelu) maps "
                        f"(projector_hidden_act {hf.get('projector_hidden_act')!r})")
    if problems:
        raise ConversionError(f"{source} ({arch}) has settings our model does not support:", problems)
    # hidden_states[k] is block k - 1 (hidden_states[0] is the embedding); negative k counts alike
    encoder = encoder_options(vision, feature_layer=layer if layer < 0 else layer - 1, keep_cls=False,
                              source=source)
    raw = {"name": src.resolve().name, "model": model, "vision": _vision_section(hf, arch, encoder),
           "text": {"template": "vicuna"}}
    if (src / TOKENIZER_FILE).exists():
        raw["text"]["tokenizer"] = {"type": "hf", "path": TOKENIZER_FILE}
    try:
        return parse_config(raw, source=source), arch
    except ConfigError as e:
        raise ConversionError(f"{source} ({arch}) does not give a valid model:", e.problems) from None


def _text_arch(hf: dict[str, Any]) -> Architecture:
    """The converter of the LLaVA's language model (Llama when its model_type is unknown: reported)."""
    model_type = (hf.get("text_config") or {}).get("model_type", "llama")
    return TEXT_ARCHITECTURES.get(model_type, TEXT_ARCHITECTURES["llama"])


def _check_feature_select(hf: dict[str, Any], has_cls: bool, problems: list[str]) -> None:
    """``vision_feature_select_strategy`` must leave patch tokens only (our ``keep_cls: false``):
    "default" drops the first token, which is CLIP's CLS; "full" keeps every token, which
    maps only where there is no CLS (SigLIP): our layout keeps no CLS token per tile."""
    strategy = hf.get("vision_feature_select_strategy", "default")
    if (strategy, has_cls) not in (("default", True), ("full", False)):
        what = "the tower has no CLS token to drop" if strategy == "default" else "we keep no CLS token per tile"
        problems.append(f"vision_feature_select_strategy: {strategy!r} is not supported here ({what})")


def _vision_section(hf: dict[str, Any], arch: str, encoder: dict[str, Any]) -> dict[str, Any]:
    """Plain LLaVA: the single layout, no newline; NeXT: anyres on its pinpoints (as [width, height]), newline."""
    common = {"encoder": encoder, "connector": {"name": "mlp2x_gelu"}, "video_connector": dict(VIDEO_CONNECTOR)}
    if LLAVA_ARCHITECTURES[arch] == "llava":
        return {**common, "layout": "single", "newline": False}
    size = encoder["image_size"]
    pinpoints = [[w, h] for h, w in hf.get("image_grid_pinpoints") or [[size, size]]]
    return {**common, "pinpoints": pinpoints, "newline": True, "unpad": "llava"}


def _plan(meta: HybridMLLM, config: Config, weights: HFWeights, text_arch: Architecture):
    """(plan of every tensor but the frame separator, their tensors we may skip)."""
    if text_arch.adapt is not None:  # e.g. packed experts: read as separate tensors, as hf_lm does
        text_arch.adapt(weights)
    names = weights.names()
    vision = _first(VISION_PREFIXES, lambda p: f"{p}embeddings.patch_embedding.weight" in names)
    embed = text_arch.hf_name("embed.weight", config.model).split(".", 1)[1]  # under the base model's prefix
    lm = _first(LM_PREFIXES, lambda p: f"{p}{embed}" in names)
    projector = _first(PROJECTOR_PREFIXES, lambda p: f"{p}linear_1.weight" in names)
    head = LM_PREFIXES[lm]

    def rename(name: str) -> str:  # the causal LM's name (model. / backbone. + ...) -> this checkpoint's
        return head + name.removeprefix("lm_head.") if name.startswith("lm_head.") else lm + name.split(".", 1)[1]

    plan: Plan = {f"lm.{k}": v for k, v in lm_plan(meta.lm, config, text_arch, rename).items()}
    plan |= timm_plan(meta.encoder.vit, vision, ours="encoder.vit.")
    shapes = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    for connector in ("connector", "video_connector"):  # both start from the projector
        for ours, theirs in (("fc1", "linear_1"), ("fc2", "linear_2")):
            for param in ("weight", "bias"):
                name = f"{connector}.{ours}.{param}"
                plan[name] = [(f"{projector}{theirs}.{param}", shapes[name])]
    if meta.image_newline is not None:
        newline = "model.image_newline" if lm.startswith("model.") else "image_newline"
        plan["image_newline"] = [(newline, tuple(meta.image_newline.shape))]
    in_tower, in_lm = vision_ignorable(meta.encoder.vit, vision), lm_ignorable(config, text_arch, rename)
    return plan, lambda n: in_tower(n) or in_lm(n)


def _first(prefixes: Iterable[str], present: Callable[[str], bool]) -> str:
    """The first prefix under which the checkpoint holds the part (else the first: check_plan
    then lists what is missing)."""
    return next((p for p in prefixes if present(p)), next(iter(prefixes)))
