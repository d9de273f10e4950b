"""``GraniteMoeHybridForCausalLM`` (IBM Granite 4.0 "H", 2025) <-> our hybrid LM.

``layer_types`` picks Mamba-2 or attention per layer; every layer then has a SwiGLU FFN: top-k
routed experts (renormalised over the k) plus a shared expert (our ``shared_moe``), or the
shared expert alone when ``num_local_experts`` is 0 (our ``mlp``). Granite's multipliers map
to ours: ``embedding_multiplier``, ``residual_multiplier`` and ``logits_scaling`` (our
``logits_multiplier`` is its inverse). ``attention_multiplier`` (the softmax scale in place of
head_dim^-0.5) is folded into ``q_proj`` when read, and exports write head_dim^-0.5. Attention
uses RoPE only with ``position_embedding_type: rope`` (Granite 4.0 H has none).

Their checkpoint packs each layer's experts (``block_sparse_moe.input_linear (E, 2I, H)``,
``output_linear (E, H, I)``) and the shared expert's gate and up (``shared_mlp.input_linear
(2I, H)``); `unpack` reads them as separate tensors and `pack` fuses them on export.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hybrid_mllm.core.config import ModelConfig

from ._arch import Architecture, HFConfigReader
from ._attention import plain_heads
from ._hf_io import HFWeights
from ._mamba2 import Mamba2Keys, check_mamba2, mixer_name, read_mamba2, write_mamba2
from .jamba import unpack_experts

# GraniteMoeHybridConfig's defaults (transformers 5.23), used for keys a config.json leaves out.
DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False,
    "embedding_multiplier": 1.0, "logits_scaling": 1.0, "residual_multiplier": 1.0, "attention_multiplier": 1.0,
    "num_local_experts": 8, "num_experts_per_tok": 2, "shared_intermediate_size": 1024, "mamba_n_heads": 128,
    "mamba_n_groups": 1, "mamba_d_state": 256, "mamba_d_head": "auto", "mamba_d_conv": 4, "mamba_expand": 2,
    "mamba_chunk_size": 256, "mamba_conv_bias": True, "mamba_proj_bias": False,
    "time_step_limit": (0.0, float("inf")),
}
KEYS = Mamba2Keys(nheads="mamba_n_heads", d_state="mamba_d_state", d_conv="mamba_d_conv", headdim="mamba_d_head",
                  ngroups="mamba_n_groups", chunk_size="mamba_chunk_size", conv_bias="mamba_conv_bias",
                  bias="mamba_proj_bias", norm_eps="rms_norm_eps", dt_min=None, dt_max=None, dt_init_floor=None)
LAYER_TYPES = {"linear_attention": "mamba2", "mamba": "mamba2", "full_attention": "attention", "attention": "attention"}


def _layers(hf: dict[str, Any], n_layer: int, problems: list[str]) -> list[str]:
    types = hf.get("layer_types", hf.get("layers_block_type")) or ["linear_attention"] * n_layer
    if not isinstance(types, list) or len(types) != n_layer or set(types) - set(LAYER_TYPES):
        problems.append(f"layer_types: expected {n_layer} of {', '.join(LAYER_TYPES)}, got {types!r}")
        return ["mamba2"] * n_layer
    return [LAYER_TYPES[t] for t in types]


def _attention(r: HFConfigReader, d_model: int) -> dict[str, Any]:
    n_head = r.get("num_attention_heads", int, minimum=1)
    position = r.hf.get("position_embedding_type")
    if position not in (None, "nope", "rope"):
        r.problems.append(f"position_embedding_type: {position!r} is not supported (rope, nope or null)")
    rope = r.hf.get("rope_parameters") or {}
    if position == "rope" and rope.get("rope_type", "default") != "default":
        r.problems.append(f"rope_parameters: rope_type {rope['rope_type']!r} is not supported: only plain RoPE maps")
    return {"n_head": n_head, "n_kv_head": r.hf.get("num_key_value_heads") or n_head, "rope": position == "rope",
            "rope_theta": float(rope.get("rope_theta", 10000.0)), "bias": r.get("attention_bias", bool)}


def to_ours(hf: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    r = HFConfigReader(hf, DEFAULTS, problems)
    r.silu()
    d_model, n_layer = r.get("hidden_size", int, minimum=1), r.get("num_hidden_layers", int, minimum=1)
    d_inner = r.whole_multiple("mamba_expand", r.get("mamba_expand", (int, float)), d_model) * d_model
    if hf.get("mamba_d_head", "auto") == "auto":  # GraniteMoeHybridConfig: expand * hidden_size // mamba_n_heads
        r.hf = {**hf, "mamba_d_head": d_inner // max(r.get("mamba_n_heads", int, minimum=1), 1)}
    layers, n_experts = _layers(hf, n_layer, problems), r.get("num_local_experts", int, minimum=0)
    shared = r.get("shared_intermediate_size", int, minimum=1)
    logits_scaling = r.get("logits_scaling", float)
    model = {
        "vocab_size": r.get("vocab_size", int, minimum=1), "d_model": d_model, "n_layer": n_layer,
        "norm_eps": r.get("rms_norm_eps", float), "tie_embeddings": r.get("tie_word_embeddings", bool),
        "embedding_multiplier": r.get("embedding_multiplier", float),
        "residual_multiplier": r.get("residual_multiplier", float),
        "logits_multiplier": 1.0 / logits_scaling if logits_scaling else 1.0,
        "layers": layers, "ffn_layers": "shared_moe" if n_experts else "mlp", "mixers": {},
    }
    if not logits_scaling:
        problems.append("logits_scaling: must not be 0 (the logits are divided by it)")
    if "mamba2" in layers:
        model["mixers"]["mamba2"] = read_mamba2(r, KEYS, d_model, d_inner)
    if "attention" in layers:
        model["mixers"]["attention"] = _attention(r, d_model)
    if n_experts:
        model["shared_moe"] = {"n_experts": n_experts, "top_k": r.get("num_experts_per_tok", int, minimum=1),
                               "d_hidden": r.get("intermediate_size", int, minimum=1), "shared_d_hidden": shared,
                               "normalize_top_k": True}
    else:
        model["mlp"] = {"d_hidden": shared}
    return model


def fold(hf: dict[str, Any], m: ModelConfig) -> dict[str, float]:
    """attention_multiplier replaces our head_dim^-0.5: scale every attention layer's queries."""
    if "attention" not in m.layers:
        return {}
    att = m.mixers["attention"]
    factor = float(hf.get("attention_multiplier", DEFAULTS["attention_multiplier"])) * math.sqrt(
        m.d_model // att["n_head"])
    params = ["q_proj.weight", "q_proj.bias"] if att["bias"] else ["q_proj.weight"]
    return {f"blocks.{i}.mixer.{p}": factor for i, kind in enumerate(m.layers) if kind == "attention" for p in params}


def to_hf(m: ModelConfig, problems: list[str]) -> dict[str, Any]:
    ffn_kinds = set(m.ffn_layers)  # Granite's three multipliers are all ours: nothing to check
    if set(m.layers) - {"mamba2", "attention"} or len(ffn_kinds) != 1 or ffn_kinds - {"mlp", "shared_moe"}:
        problems.append("each layer must be mamba2 or attention, all with the same FFN: shared_moe or mlp")
        return {}
    ffn_kind = m.ffn_layers[0]
    ffn = m.ffns[ffn_kind]
    if ffn_kind == "mlp" and ffn["bias"]:
        problems.append("mlp.bias must be false: Granite's shared expert has no bias")
    if ffn_kind == "shared_moe" and not ffn["normalize_top_k"]:
        problems.append("shared_moe.normalize_top_k must be true: Granite renormalises the top-k weights")
    out = {"vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": m.n_layer,
           "rms_norm_eps": m.norm_eps, "tie_word_embeddings": m.tie_embeddings, "hidden_act": "silu",
           "embedding_multiplier": m.embedding_multiplier, "residual_multiplier": m.residual_multiplier,
           "logits_scaling": 1.0 / m.logits_multiplier,
           "layer_types": ["linear_attention" if k == "mamba2" else "full_attention" for k in m.layers]}
    if ffn_kind == "shared_moe":
        out.update(num_local_experts=ffn["n_experts"], num_experts_per_tok=ffn["top_k"],
                   intermediate_size=ffn["d_hidden"] or 4 * m.d_model,
                   shared_intermediate_size=ffn["shared_d_hidden"] or ffn["d_hidden"] or 4 * m.d_model)
    else:
        out.update(num_local_experts=0, shared_intermediate_size=ffn["d_hidden"] or 4 * m.d_model)
    if "mamba2" in m.layers:
        check_mamba2(m.mixers["mamba2"], problems, norm_eps=m.norm_eps)
        out.update(write_mamba2(m.mixers["mamba2"], KEYS, m.d_model), mamba_expand=m.mixers["mamba2"]["expand"])
    if "attention" in m.layers:
        att = m.mixers["attention"]
        plain_heads(att, m.d_model, problems, "GraniteMoeHybridForCausalLM")
        out.update(num_attention_heads=att["n_head"], num_key_value_heads=att["n_kv_head"] or att["n_head"],
                   attention_bias=att["bias"], attention_multiplier=(m.d_model // att["n_head"]) ** -0.5,
                   position_embedding_type="rope" if att["rope"] else None,
                   rope_parameters={"rope_type": "default", "rope_theta": att["rope_theta"]})
    return out


SWIGLU = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def hf_name(name: str, m: ModelConfig) -> str:
    top = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, part, rest = name.split(".", 3)  # blocks.<i>.<part>.<rest>
    layer = f"model.layers.{i}."
    if part == "mixer":
        return layer + ("mamba." + mixer_name(rest) if m.layers[int(i)] == "mamba2" else "self_attn." + rest)
    if part == "ffn":
        return layer + _ffn_name(rest)
    return layer + {"mixer_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}[part] + "." + rest


def _ffn_name(rest: str) -> str:
    """``routed.experts.3.up.weight`` -> ``block_sparse_moe.experts.3.up_proj.weight`` (unpacked);
    ``shared.down.weight`` or ``down.weight`` (an mlp) -> ``shared_mlp.output_linear.weight``."""
    if rest == "routed.router.weight":
        return "block_sparse_moe.router.layer.weight"
    *head, module, param = rest.split(".")
    if head[:2] == ["routed", "experts"]:
        return f"block_sparse_moe.experts.{head[2]}.{SWIGLU[module]}.{param}"
    return "shared_mlp." + ("output_linear" if module == "down" else SWIGLU[module]) + "." + param


def unpack(weights: HFWeights) -> None:
    """Read the packed experts and shared expert (either of transformers' layouts) as separate tensors."""
    unpack_experts(weights)  # transformers' own layout: experts.gate_up_proj / experts.down_proj
    for name in sorted(weights.names()):
        prefix, _, last = name.rpartition(".")
        if name.endswith("block_sparse_moe.router.weight"):
            weights.unpack(name, {prefix + ".layer.weight": ()})
        elif name.endswith("block_sparse_moe.input_linear.weight"):
            n_experts, half = weights.shape(name)[0], weights.shape(name)[1] // 2
            base = name.removesuffix("input_linear.weight") + "experts."
            weights.unpack(name, {f"{base}{e}.{proj}.weight": (e, part) for e in range(n_experts) for proj, part in
                                  (("gate_proj", slice(0, half)), ("up_proj", slice(half, 2 * half)))})
        elif name.endswith("block_sparse_moe.output_linear.weight"):
            base = name.removesuffix("output_linear.weight") + "experts."
            weights.unpack(name, {f"{base}{e}.down_proj.weight": (e,) for e in range(weights.shape(name)[0])})
        elif name.endswith("shared_mlp.input_linear.weight"):
            half = weights.shape(name)[0] // 2
            base = name.removesuffix("input_linear.weight")
            weights.unpack(name, {base + "gate_proj.weight": (slice(0, half),),
                                  base + "up_proj.weight": (slice(half, 2 * half),)})


def pack(tensors: dict[str, torch.Tensor]) -> None:
    """The inverse of `unpack`, in Granite's original layout (what its published checkpoints hold)."""
    for name in sorted(n for n in tensors if n.endswith("shared_mlp.gate_proj.weight")):
        base = name.removesuffix("gate_proj.weight")
        tensors[base + "input_linear.weight"] = torch.cat([tensors.pop(name), tensors.pop(base + "up_proj.weight")])
    for name in sorted(n for n in tensors if n.endswith("block_sparse_moe.router.layer.weight")):
        base = name.removesuffix("router.layer.weight")
        n_experts = tensors[name].shape[0]
        parts = {proj: [tensors.pop(f"{base}experts.{e}.{proj}.weight") for e in range(n_experts)]
                 for proj in ("gate_proj", "up_proj", "down_proj")}
        tensors[base + "input_linear.weight"] = torch.stack(
            [torch.cat([g, u]) for g, u in zip(parts["gate_proj"], parts["up_proj"], strict=True)])
        tensors[base + "output_linear.weight"] = torch.stack(parts["down_proj"])


GRANITE_HYBRID = Architecture("GraniteMoeHybridForCausalLM", "granitemoehybrid", to_ours, to_hf, hf_name,
                              adapt=unpack, fold=fold, pack=pack,
                              llava_ignores=("logits_scaling",))  # in GraniteMoeHybridForCausalLM's head only
