"""Hugging Face CLIP / SigLIP vision towers -> our ``timm`` encoder.

We map to timm rather than add a transformers-backed encoder: transformers is never
imported at run time, and the tower becomes an ordinary `TimmViT` (its ``model_args``
give the exact architecture), so it exports, freezes and loads like any other. The
blocks are the same computation; only names and layouts differ:

```
HF (prefix P: "", "vision_model.", "vision_tower." ...)    timm (TimmViT.vit)
P embeddings.class_embedding            (D,)                cls_token         (1, 1, D)   CLIP only
P embeddings.position_embedding.weight  (T, D)              pos_embed         (1, T, D)
P embeddings.patch_embedding.weight     (D, 3, p, p)        patch_embed.proj.weight (+ .bias: SigLIP)
P pre_layrnorm.*                        (D,)                norm_pre.*                    CLIP only
P encoder.layers.i.self_attn.{q,k,v}_proj.* (D, D)          blocks.i.attn.qkv.*  (3D, D), q|k|v stacked
P encoder.layers.i.self_attn.out_proj.*                     blocks.i.attn.proj.*
P encoder.layers.i.layer_norm{1,2}.*                        blocks.i.norm{1,2}.*
P encoder.layers.i.mlp.fc{1,2}.*                            blocks.i.mlp.fc{1,2}.*
P post_layernorm.*, P head.* (SigLIP pooling head), projections: not used for features
```
HF's ``hidden_states[k]`` (k < 0) is our ``feature_layer: k``: the output of a block, before
the final LayerNorm, which is what LLaVA takes (k = -2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from hybrid_mllm.core.atomic import write_directory
from hybrid_mllm.core.checkpoint import WEIGHTS_FILE, save_weights
from hybrid_mllm.core.registry import get_registry

from ._arch import HFConfigReader
from ._hf_io import HF_CONFIG_FILE, ConversionError, HFWeights, parse_dtype, read_hf_config
from ._plan import Plan, check_plan, fill_from_plan

ENCODER_FILE = "encoder.yaml"  # the vision.encoder mapping that loads the converted weights
# transformers' activation names -> timm's (gelu_new and gelu_pytorch_tanh are the tanh approximation)
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


@dataclass(frozen=True)
class VisionFamily:
    """What a Hugging Face vision config's ``model_type`` fixes about the tower."""

    name: str
    timm_name: str  # the nearest timm model: its defaults and its pixel normalisation
    class_token: bool
    pre_norm: bool  # CLIP's pre_layrnorm (and no patch bias, as timm pairs them)
    defaults: dict[str, Any]  # the config class's defaults (transformers 5.23)


_COMMON = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "num_channels": 3, "image_size": 224}
FAMILIES = {
    "clip_vision_model": VisionFamily("CLIP", "vit_base_patch16_clip_224", True, True,
                                      {**_COMMON, "patch_size": 32, "hidden_act": "quick_gelu",
                                       "layer_norm_eps": 1e-5}),
    "siglip_vision_model": VisionFamily("SigLIP", "vit_base_patch16_siglip_224", False, False,
                                        {**_COMMON, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
                                         "layer_norm_eps": 1e-6}),
}
# architectures entry -> (prefix of the tower's tensors, whether the tower is nested under vision_config)
VISION_ARCHITECTURES = {
    "CLIPVisionModel": ("", False), "CLIPVisionModelWithProjection": ("vision_model.", False),
    "CLIPModel": ("vision_model.", True), "SiglipVisionModel": ("", False), "SiglipModel": ("vision_model.", True),
}
VISION_MODEL_TYPES = {"clip_vision_model": "CLIPVisionModel", "siglip_vision_model": "SiglipVisionModel",
                      "clip": "CLIPModel", "siglip": "SiglipModel"}


def family_of(vision: dict[str, Any], source: str) -> VisionFamily:
    model_type = vision.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:  # a list is unhashable
        raise ConversionError(f"{source}: vision model_type {model_type!r} cannot be converted: supported are "
                              f"{', '.join(FAMILIES)} (CLIP and SigLIP towers)")
    return FAMILIES[model_type]


def encoder_options(vision: dict[str, Any], *, feature_layer: int, keep_cls: bool, source: str) -> dict[str, Any]:
    """Our ``vision.encoder`` mapping (a `TimmViT` of exactly this architecture) for a Hugging
    Face CLIP / SigLIP vision config; a `ConversionError` lists every setting that does not map."""
    family = family_of(vision, source)
    problems: list[str] = []
    r = HFConfigReader(vision, family.defaults, problems)
    d, hidden = r.get("hidden_size", int, minimum=1), r.get("intermediate_size", int, minimum=1)
    size, patch = r.get("image_size", int, minimum=1), r.get("patch_size", int, minimum=1)
    act = vision.get("hidden_act", family.defaults["hidden_act"])
    if not isinstance(act, str) or act not in ACTIVATIONS:  # a list is unhashable
        problems.append(f"hidden_act: {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        act = "gelu"  # a stand-in: the problems are raised below
    if r.get("num_channels", int) != 3:
        problems.append(f"num_channels: {vision['num_channels']} is not supported: our images are RGB (3)")
    if size % patch:
        problems.append(f"image_size ({size}) is not a multiple of patch_size ({patch})")
    if int(d * (hidden / d)) != hidden:  # timm's MLP width is int(embed_dim * mlp_ratio)
        problems.append(f"intermediate_size ({hidden}) is not representable as a timm mlp_ratio of {d}")
    model_args = {
        "embed_dim": d, "depth": r.get("num_hidden_layers", int, minimum=1),
        "num_heads": r.get("num_attention_heads", int, minimum=1), "patch_size": patch, "mlp_ratio": hidden / d,
        "class_token": family.class_token, "pre_norm": family.pre_norm, "act_layer": ACTIVATIONS[act],
        "norm_eps": r.get("layer_norm_eps", float),
    }
    if problems:
        raise ConversionError(f"{source} ({family.name} vision) has settings our encoder does not support:", problems)
    return {"name": "timm", "model_name": family.timm_name, "image_size": size, "feature_layer": feature_layer,
            "keep_cls": keep_cls, "model_args": model_args}


def timm_plan(vit: nn.Module, prefix: str, ours: str = "") -> Plan:
    """Our timm tensors (`vit`'s, named with `ours` in front) -> their sources under `prefix`."""
    rename = _timm_to_hf(prefix)
    return {ours + name: [(theirs, _hf_shape(theirs, tensor.shape, vit.embed_dim)) for theirs in rename(name)]
            for name, tensor in vit.state_dict().items()}


def _timm_to_hf(prefix: str) -> Callable[[str], list[str]]:
    top = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding.weight",
           "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
           "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
           "norm_pre.weight": "pre_layrnorm.weight", "norm_pre.bias": "pre_layrnorm.bias"}
    part = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}

    def rename(name: str) -> list[str]:
        if name in top:
            return [prefix + top[name]]
        _, i, rest = name.split(".", 2)  # blocks.<i>.<module ...>.<weight|bias>
        module, param = rest.rsplit(".", 1)
        layer = f"{prefix}encoder.layers.{i}."
        if module == "attn.qkv":  # fused in timm, three projections in HF
            return [f"{layer}self_attn.{x}_proj.{param}" for x in "qkv"]
        return [f"{layer}{part[module]}.{param}"]

    return rename


def _hf_shape(theirs: str, ours: torch.Size, d: int) -> tuple[int, ...]:
    """Their shape of one source of our tensor: the class and position embeddings lose timm's
    leading 1s; each of q, k, v is a third of qkv."""
    if theirs.endswith(("class_embedding", "position_embedding.weight")):
        return tuple(ours[2:] if theirs.endswith("class_embedding") else ours[1:])
    if "self_attn." in theirs and not theirs.endswith(("out_proj.weight", "out_proj.bias")):
        return (d, *ours[1:])
    return tuple(ours)


def vision_ignorable(vit: nn.Module, prefix: str) -> Callable[[str], bool]:
    """Tensors of the tower our (cut) encoder does not read: blocks after the feature layer,
    the final norm, SigLIP's pooling head; anything outside `prefix` (a projection, a full
    CLIP / SigLIP model's text tower) is the caller's to judge."""
    depth = len(vit.blocks)

    def ignorable(name: str) -> bool:
        if not name.startswith(prefix):
            return False
        rest = name[len(prefix):]
        if rest.startswith("encoder.layers."):
            index = rest.split(".")[2]
            if not (index.isascii() and index.isdigit()):
                raise ConversionError(f"tensor {name}: layer index {index!r} is not a number "
                                      "(expected encoder.layers.<N>.<...>): not a CLIP / SigLIP tower's tensor")
            return int(index) >= depth
        return rest.startswith(("post_layernorm.", "head.", "embeddings.position_ids"))

    return ignorable


def load_hf_vision(src: str | os.PathLike, *, feature_layer: int = -2, keep_cls: bool = False,
                   dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu"):
    """Read a Hugging Face CLIP / SigLIP vision (or full CLIP / SigLIP) directory into our
    ``timm`` encoder. Returns (encoder in eval mode, its ``vision.encoder`` options)."""
    src = Path(src)
    hf = read_hf_config(src)
    arch = _vision_architecture(hf, src)
    prefix, nested = VISION_ARCHITECTURES[arch]
    vision = (hf.get("vision_config") or {}) if nested else hf
    source = str(src / HF_CONFIG_FILE)
    options = encoder_options(vision, feature_layer=feature_layer, keep_cls=keep_cls, source=source)
    cls = get_registry().get("encoder", "timm")
    with HFWeights(src) as weights:
        prefix = _present_prefix(weights, prefix)
        meta = cls(**_without_name(options), device="meta")
        plan = timm_plan(meta.vit, prefix, ours="vit.")
        outside = (lambda n: not n.startswith(prefix)) if nested else (lambda _: False)  # the text tower
        inside = vision_ignorable(meta.vit, prefix)
        check_plan(plan, weights, f"{src} does not match its {HF_CONFIG_FILE} ({arch}):",
                   ignorable=lambda n: outside(n) or inside(n) or n == "visual_projection.weight")
        dtype = parse_dtype(dtype) or weights.stored_dtype(plan["vit.pos_embed"][0][0])
        encoder = cls(**_without_name(options), device="meta", dtype=dtype).to_empty(device=device)
        fill_from_plan(encoder.state_dict(), plan, weights)
    return encoder.eval(), options


def convert_hf_vision(src: str | os.PathLike, out: str | os.PathLike, *, feature_layer: int = -2,
                      keep_cls: bool = False, dtype: torch.dtype | str | None = None,
                      overwrite: bool = False) -> tuple[Path, dict[str, Any]]:
    """Write the tower's every block as timm-named safetensors plus ``encoder.yaml``, the
    ``vision.encoder`` mapping that loads it (``pretrained_path`` is the file's absolute path;
    any ``feature_layer`` works, the encoder drops the blocks after it). Atomic."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConversionError(f"{out} already exists: choose another directory or pass --overwrite")
    encoder, options = load_hf_vision(src, feature_layer=-1, dtype=dtype)  # every block
    options = {**options, "feature_layer": feature_layer, "keep_cls": keep_cls,
               "pretrained_path": str(out.resolve() / WEIGHTS_FILE)}
    tensors = {name: t.detach().contiguous() for name, t in encoder.vit.state_dict().items()}

    def fill(tmp: Path) -> None:
        save_weights(tensors, tmp, max_shard_bytes=2**62)  # one file: pretrained_path names it
        header = "# The vision.encoder mapping for these weights: paste it under `vision:` in a model config.\n"
        (tmp / ENCODER_FILE).write_text(header + yaml.safe_dump({"encoder": options}, sort_keys=False))

    return write_directory(out, fill, overwrite=overwrite), options


def _vision_architecture(hf: dict[str, Any], src: Path) -> str:
    """The architectures entry we convert, or the one its model_type implies."""
    for entry in hf.get("architectures") or []:
        if isinstance(entry, str) and entry in VISION_ARCHITECTURES:
            return entry
    model_type = hf.get("model_type")
    if isinstance(model_type, str) and model_type in VISION_MODEL_TYPES and not hf.get("architectures"):
        return VISION_MODEL_TYPES[model_type]
    got = ", ".join(map(str, hf.get("architectures") or ["none"]))
    raise ConversionError(f"{src / HF_CONFIG_FILE}: architectures {got} "
                          f"is not a vision tower we convert: supported are {', '.join(VISION_ARCHITECTURES)}")


def _present_prefix(weights: HFWeights, expected: str) -> str:
    """transformers 5 saves a CLIPVisionModel without its ``vision_model.`` prefix, 4.x with
    it: take whichever holds the patch embedding."""
    for prefix in dict.fromkeys((expected, "", "vision_model.")):
        if f"{prefix}embeddings.patch_embedding.weight" in weights.names():
            return prefix
    return expected  # check_plan then lists what is missing


def _without_name(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "name"}
