"""``MambaForCausalLM`` (Gu & Dao, 2023) <-> our LM with Mamba mixers only and no FFN.

Each block is ``x + mixer(norm(x))`` (``ffn_layers: none``); every norm uses
``layer_norm_epsilon``. transformers keeps the residual stream in float32 when
``residual_in_fp32`` (the default); ours keeps it in the model's dtype, which is the same
thing in float32 and rounds the residual to the dtype otherwise. Exports therefore say
``residual_in_fp32: false``, which is what our model computes.
"""

from __future__ import annotations

from typing import Any

from hybrid_mllm.core.config import ModelConfig

from ._arch import MAMBA_TENSORS, Architecture, HFConfigReader, dt_rank

# MambaConfig's defaults (transformers 5.23), used for keys a config.json leaves out.
DEFAULTS = {
    "vocab_size": 50280, "hidden_size": 768, "state_size": 16, "num_hidden_layers": 32,
    "layer_norm_epsilon": 1e-5, "expand": 2, "conv_kernel": 4, "use_bias": False, "use_conv_bias": True,
    "time_step_rank": "auto", "tie_word_embeddings": True,
}


def to_ours(hf: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    r = HFConfigReader(hf, DEFAULTS, problems)
    r.silu()
    d_model, n_layer = r.get("hidden_size", int, minimum=1), r.get("num_hidden_layers", int, minimum=1)
    return {
        "vocab_size": r.get("vocab_size", int, minimum=1),
        "d_model": d_model,
        "n_layer": n_layer,
        "norm_eps": r.get("layer_norm_epsilon", float),
        "tie_embeddings": r.get("tie_word_embeddings", bool),
        "layers": ["mamba"] * n_layer,
        "ffn_layers": "none",
        "mixers": {"mamba": {
            "d_state": r.get("state_size", int, minimum=1),
            "d_conv": r.get("conv_kernel", int, minimum=1),
            "expand": r.whole_multiple("expand", r.get("expand", (int, float)), d_model),
            "dt_rank": dt_rank(r.get("time_step_rank", (int, str)), d_model),
            "conv_bias": r.get("use_conv_bias", bool),
            "bias": r.get("use_bias", bool),
        }},
    }


def to_hf(m: ModelConfig, problems: list[str]) -> dict[str, Any]:
    if set(m.layers) != {"mamba"}:
        problems.append(f"every layer must be mamba (got {', '.join(sorted(set(m.layers)))})")
    if set(m.ffn_layers) != {"none"}:
        problems.append(f"ffn_layers must all be none: Mamba blocks have no FFN (got {', '.join(sorted(set(m.ffn_layers)))})")
    mamba = m.mixers.get("mamba")
    if mamba is not None and mamba["inner_norms"]:
        problems.append("mixers.mamba.inner_norms must be false: Mamba has no norms on dt, B and C")
    if problems:
        return {}
    return {
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": m.n_layer,
        "layer_norm_epsilon": m.norm_eps, "tie_word_embeddings": m.tie_embeddings, "hidden_act": "silu",
        "state_size": mamba["d_state"], "conv_kernel": mamba["d_conv"], "expand": mamba["expand"],
        "intermediate_size": mamba["expand"] * m.d_model,
        "time_step_rank": dt_rank(mamba["dt_rank"] or "auto", m.d_model),
        "use_bias": mamba["bias"], "use_conv_bias": mamba["conv_bias"], "residual_in_fp32": False,
    }


def hf_name(name: str, m: ModelConfig) -> str:
    top = {"embed.weight": "backbone.embeddings.weight", "norm.weight": "backbone.norm_f.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, part, rest = name.split(".", 3)  # blocks.<i>.<part>.<rest>; parts: mixer_norm, mixer
    if part == "mixer":
        return f"backbone.layers.{i}.mixer.{MAMBA_TENSORS.get(rest, rest)}"
    return f"backbone.layers.{i}.norm.{rest}"


MAMBA = Architecture("MambaForCausalLM", "mamba", to_ours, to_hf, hf_name)
