"""``LlamaForCausalLM`` <-> our LM with RoPE attention only: the Transformer twin.

Pre-norm blocks of grouped-query attention with rotary positions (half-split layout,
transformers' ``rotate_half``) and a SwiGLU MLP; ``head_dim`` may differ from
``hidden_size / num_attention_heads`` (our ``head_dim``). Only plain RoPE maps: a ``rope_type``
other than ``default`` (llama3, linear, dynamic, yarn ...) is reported as unsupported.
"""

from __future__ import annotations

from typing import Any

from hybrid_mllm.core.config import ModelConfig

from ._arch import Architecture, HFConfigReader, swiglu_name
from ._attention import head_dim_of, read_head_dim, whole_heads

# LlamaConfig's defaults (transformers 5.23), used for keys a config.json leaves out.
DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False,
    "mlp_bias": False, "rope_theta": 10000.0,
}


def _rope_theta(hf: dict[str, Any], problems: list[str]) -> float:
    """theta from ``rope_parameters`` (transformers 5) or ``rope_theta`` / ``rope_scaling`` (4.x)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        key = "rope_parameters" if "rope_parameters" in hf else "rope_scaling"
        problems.append(f"{key}: rope_type {rope_type!r} is not supported: only plain RoPE (rope_type 'default') maps")
    return float(rope.get("rope_theta", hf.get("rope_theta", DEFAULTS["rope_theta"])))


def to_ours(hf: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    r = HFConfigReader(hf, DEFAULTS, problems)
    r.silu()
    d_model, n_layer = r.get("hidden_size", int, minimum=1), r.get("num_hidden_layers", int, minimum=1)
    n_head = r.get("num_attention_heads", int, minimum=1)
    return {
        "vocab_size": r.get("vocab_size", int, minimum=1),
        "d_model": d_model,
        "n_layer": n_layer,
        "norm_eps": r.get("rms_norm_eps", float),
        "tie_embeddings": r.get("tie_word_embeddings", bool),
        "layers": ["attention"] * n_layer,
        "ffn_layers": "mlp",
        "mixers": {"attention": {
            "n_head": n_head,
            "n_kv_head": hf.get("num_key_value_heads") or n_head,  # LlamaConfig: None means n_head
            "head_dim": read_head_dim(r, d_model, n_head),
            "rope": True,
            "rope_theta": _rope_theta(hf, problems),
            "bias": r.get("attention_bias", bool),
        }},
        "mlp": {"d_hidden": r.get("intermediate_size", int, minimum=1), "bias": r.get("mlp_bias", bool)},
    }


def to_hf(m: ModelConfig, problems: list[str]) -> dict[str, Any]:
    if set(m.layers) != {"attention"}:
        problems.append(f"every layer must be attention (got {', '.join(sorted(set(m.layers)))})")
    if set(m.ffn_layers) != {"mlp"}:
        problems.append(f"ffn_layers must all be mlp (got {', '.join(sorted(set(m.ffn_layers)))})")
    att = m.mixers.get("attention")
    if att is not None and not att["rope"]:
        problems.append("mixers.attention.rope must be true: Llama's attention uses RoPE")
    if att is not None:
        whole_heads(att, problems, "LlamaForCausalLM")
    if problems:
        return {}
    return {
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": m.n_layer,
        "intermediate_size": m.ffns["mlp"]["d_hidden"] or 4 * m.d_model, "hidden_act": "silu",
        "rms_norm_eps": m.norm_eps, "tie_word_embeddings": m.tie_embeddings,
        "num_attention_heads": att["n_head"], "num_key_value_heads": att["n_kv_head"] or att["n_head"],
        "head_dim": head_dim_of(att, m.d_model),
        "rope_parameters": {"rope_type": "default", "rope_theta": att["rope_theta"]},
        "attention_bias": att["bias"], "mlp_bias": m.ffns["mlp"]["bias"],
    }


def hf_name(name: str, m: ModelConfig) -> str:
    top = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, part, rest = name.split(".", 3)  # blocks.<i>.<part>.<rest>
    layer = f"model.layers.{i}."
    if part == "mixer":
        return layer + "self_attn." + rest
    if part == "ffn":
        return layer + "mlp." + swiglu_name(rest)
    return layer + {"mixer_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}[part] + "." + rest


# Early conversions saved the rotary inv_freq buffer; transformers recomputes and drops it.
LLAMA = Architecture("LlamaForCausalLM", "llama", to_ours, to_hf, hf_name, ignored=("rotary_emb.inv_freq",))
