"""``JambaForCausalLM`` (Lieber et al., 2024) <-> our hybrid LM: the paper's language model.

Layer i has attention where ``i % attn_layer_period == attn_layer_offset``, else Mamba (with
Jamba's RMSNorms on dt, B and C, eps ``rms_norm_eps``); its FFN is a mixture of
``num_experts`` SwiGLU experts where ``i % expert_layer_period == expert_layer_offset``,
else a SwiGLU MLP (everywhere when ``num_experts == 1``). The router takes the top
``num_experts_per_tok`` of a softmax over all experts, without renormalising them
(transformers' JambaTopKRouter). Attention has no positional encoding.
"""

from __future__ import annotations

from typing import Any

from hybrid_mllm.core.config import ModelConfig

from ._arch import MAMBA_TENSORS, Architecture, HFConfigReader, dt_rank, fit_period, swiglu_name
from ._attention import plain_heads
from ._hf_io import HFWeights

# JambaConfig's defaults (transformers 5.23), used for keys a config.json leaves out.
DEFAULTS = {
    "vocab_size": 65536, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "num_experts_per_tok": 2, "num_experts": 16, "expert_layer_period": 2, "expert_layer_offset": 1,
    "attn_layer_period": 8, "attn_layer_offset": 4, "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2,
    "mamba_dt_rank": "auto", "mamba_conv_bias": True, "mamba_proj_bias": False,
}


def to_ours(hf: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    r = HFConfigReader(hf, DEFAULTS, problems)
    r.silu()
    d_model, n_layer = r.get("hidden_size", int, minimum=1), r.get("num_hidden_layers", int, minimum=1)
    n_head = r.get("num_attention_heads", int, minimum=1)
    # absent: JambaConfig's default (8); null: as many as query heads
    n_kv_head = n_head if hf.get("num_key_value_heads", 0) is None else r.get("num_key_value_heads", int, minimum=1)
    plans = {}
    for prefix in ("attn", "expert"):
        period = r.get(f"{prefix}_layer_period", int, minimum=1)
        offset = r.get(f"{prefix}_layer_offset", int, minimum=0)
        if offset >= period:
            problems.append(f"{prefix}_layer_offset ({offset}) must be smaller than {prefix}_layer_period ({period})")
        plans[prefix] = [i % period == offset for i in range(n_layer)]
    n_experts = r.get("num_experts", int, minimum=1)
    d_hidden = r.get("intermediate_size", int, minimum=1)
    model = {
        "vocab_size": r.get("vocab_size", int, minimum=1),
        "d_model": d_model,
        "n_layer": n_layer,
        "norm_eps": r.get("rms_norm_eps", float),
        "tie_embeddings": r.get("tie_word_embeddings", bool),
        "layers": ["attention" if hit else "mamba" for hit in plans["attn"]],
        # one expert is a plain MLP in transformers (layers_num_experts == 1 -> JambaMLP)
        "ffn_layers": ["moe" if hit and n_experts > 1 else "mlp" for hit in plans["expert"]],
        "mixers": {
            "mamba": {
                "d_state": r.get("mamba_d_state", int, minimum=1),
                "d_conv": r.get("mamba_d_conv", int, minimum=1),
                "expand": r.whole_multiple("mamba_expand", r.get("mamba_expand", (int, float)), d_model),
                "dt_rank": dt_rank(r.get("mamba_dt_rank", (int, str)), d_model),
                "conv_bias": r.get("mamba_conv_bias", bool),
                "bias": r.get("mamba_proj_bias", bool),
                "inner_norms": True,
                "norm_eps": r.get("rms_norm_eps", float),
            },
            "attention": {"n_head": n_head, "n_kv_head": n_kv_head},
        },
        "mlp": {"d_hidden": d_hidden},
    }
    if "moe" in model["ffn_layers"]:
        model["moe"] = {"n_experts": n_experts, "top_k": r.get("num_experts_per_tok", int, minimum=1),
                        "d_hidden": d_hidden, "normalize_top_k": False}
    for kind in ("attention", "mamba"):
        if kind not in model["layers"]:
            del model["mixers"][kind]
    return model


def to_hf(m: ModelConfig, problems: list[str]) -> dict[str, Any]:
    bad = sorted(set(m.layers) - {"attention", "mamba"}) + sorted(set(m.ffn_layers) - {"mlp", "moe"})
    if bad:
        problems.append(f"layers use {', '.join(bad)}: Jamba has attention or mamba mixers, each with an mlp or moe")
        return {}
    attn = fit_period([kind == "attention" for kind in m.layers])
    experts = fit_period([kind == "moe" for kind in m.ffn_layers])
    if attn is None:
        problems.append("the attention layers do not follow an attn_layer_period / attn_layer_offset pattern")
    if experts is None:
        problems.append("the moe layers do not follow an expert_layer_period / expert_layer_offset pattern")
    # options of unused mixers are their defaults: harmless in config.json, as no layer builds them
    mamba, att = m.mixers.get("mamba"), m.mixers.get("attention")
    if "mamba" in m.layers:
        if not mamba["inner_norms"]:
            problems.append("mixers.mamba.inner_norms must be true (Jamba's RMSNorms on dt, B and C)")
        if mamba["norm_eps"] != m.norm_eps:
            problems.append(f"mixers.mamba.norm_eps ({mamba['norm_eps']}) must equal norm_eps ({m.norm_eps}): "
                            "Jamba has one rms_norm_eps")
    if "attention" in m.layers:
        if att["rope"]:
            problems.append("mixers.attention.rope must be false: Jamba's attention has no positional encoding")
        if att["bias"]:
            problems.append("mixers.attention.bias must be false: Jamba's projections have no bias")
        plain_heads(att, m.d_model, problems, "JambaForCausalLM")
    d_hidden = {kind: m.ffns.get(kind, {}).get("d_hidden") or 4 * m.d_model for kind in ("mlp", "moe")}
    has_moe = "moe" in m.ffn_layers
    if "mlp" in m.ffn_layers and m.ffns["mlp"]["bias"]:
        problems.append("mlp.bias must be false: Jamba's MLP has no bias")
    if has_moe and m.ffns["moe"]["normalize_top_k"]:
        problems.append("moe.normalize_top_k must be false: Jamba does not renormalise the top-k weights")
    if has_moe and m.ffns["moe"]["n_experts"] == 1:
        problems.append("moe.n_experts must be > 1: transformers builds a one-expert layer as a plain MLP")
    if has_moe and "mlp" in m.ffn_layers and d_hidden["mlp"] != d_hidden["moe"]:
        problems.append(f"mlp.d_hidden ({d_hidden['mlp']}) must equal moe.d_hidden ({d_hidden['moe']}): "
                        "Jamba has one intermediate_size")
    if problems:
        return {}
    mamba = mamba or {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": None, "conv_bias": True, "bias": False}
    att = att or {"n_head": 1, "n_kv_head": None}
    return {
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": m.n_layer,
        "intermediate_size": d_hidden["moe" if has_moe else "mlp"], "hidden_act": "silu",
        "rms_norm_eps": m.norm_eps, "tie_word_embeddings": m.tie_embeddings,
        "attn_layer_period": attn[0], "attn_layer_offset": attn[1],
        "expert_layer_period": experts[0], "expert_layer_offset": experts[1],
        "num_experts": m.ffns["moe"]["n_experts"] if has_moe else 1,
        "num_experts_per_tok": m.ffns["moe"]["top_k"] if has_moe else 1,
        "num_attention_heads": att["n_head"], "num_key_value_heads": att["n_kv_head"] or att["n_head"],
        "mamba_d_state": mamba["d_state"], "mamba_d_conv": mamba["d_conv"], "mamba_expand": mamba["expand"],
        "mamba_dt_rank": dt_rank(mamba["dt_rank"] or "auto", m.d_model),
        "mamba_conv_bias": mamba["conv_bias"], "mamba_proj_bias": mamba["bias"],
    }


def hf_name(name: str, m: ModelConfig) -> str:
    top = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.final_layernorm.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, part, rest = name.split(".", 3)  # blocks.<i>.<part>.<rest>
    layer = f"model.layers.{i}."
    if part == "mixer":
        if m.layers[int(i)] == "mamba":
            return layer + "mamba." + MAMBA_TENSORS.get(rest, rest)
        return layer + "self_attn." + rest
    if part == "ffn":
        return layer + "feed_forward." + swiglu_name(rest)
    return layer + {"mixer_norm": "input_layernorm", "ffn_norm": "pre_ff_layernorm"}[part] + "." + rest


def unpack_experts(weights: HFWeights) -> None:
    """Also read transformers' packed expert tensors (``save_pretrained(save_original_format=False)``):
    ``experts.gate_up_proj (E, 2I, H)`` and ``experts.down_proj (E, H, I)`` become
    ``experts.<e>.{gate,up,down}_proj.weight``, the layout of the published checkpoints."""
    for name in sorted(weights.names()):
        prefix, _, last = name.rpartition(".experts.")
        if last == "gate_up_proj" and len(shape := weights.shape(name)) == 3:
            n_experts, half = shape[0], shape[1] // 2
            weights.unpack(name, {f"{prefix}.experts.{e}.{proj}.weight": (e, part)
                                  for e in range(n_experts)
                                  for proj, part in (("gate_proj", slice(0, half)), ("up_proj", slice(half, 2 * half)))})
        elif last == "down_proj" and len(shape := weights.shape(name)) == 3:
            weights.unpack(name, {f"{prefix}.experts.{e}.down_proj.weight": (e,) for e in range(shape[0])})


JAMBA = Architecture("JambaForCausalLM", "jamba", to_ours, to_hf, hf_name, adapt=unpack_experts)
