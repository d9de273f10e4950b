"""``Mamba2ForCausalLM`` (Dao & Gu, 2024) <-> our LM with Mamba-2 mixers only and no FFN.

Each block is ``x + mixer(norm(x))`` (``ffn_layers: none``), the mixer's width
``expand * hidden_size`` split into ``num_heads`` heads of ``head_dim``. As for Mamba-1,
transformers' ``residual_in_fp32`` is the same in float32; exports say false, what ours computes.
"""

from __future__ import annotations

from typing import Any

from hybrid_mllm.core.config import ModelConfig

from ._arch import Architecture, HFConfigReader, check_multipliers
from ._mamba2 import Mamba2Keys, check_mamba2, mixer_name, read_mamba2, write_mamba2

# Mamba2Config's defaults (transformers 5.23), used for keys a config.json leaves out.
DEFAULTS = {
    "num_heads": 128, "head_dim": 64, "vocab_size": 32768, "hidden_size": 4096, "state_size": 128,
    "num_hidden_layers": 64, "layer_norm_epsilon": 1e-5, "expand": 2, "conv_kernel": 4, "n_groups": 8,
    "use_bias": False, "use_conv_bias": True, "time_step_min": 0.001, "time_step_max": 0.1,
    "time_step_floor": 1e-4, "time_step_limit": (0.0, float("inf")), "chunk_size": 256, "tie_word_embeddings": False,
}
KEYS = Mamba2Keys(nheads="num_heads", d_state="state_size", d_conv="conv_kernel", headdim="head_dim",
                  ngroups="n_groups", chunk_size="chunk_size", conv_bias="use_conv_bias", bias="use_bias",
                  norm_eps="layer_norm_epsilon")


def to_ours(hf: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    r = HFConfigReader(hf, DEFAULTS, problems)
    d_model, n_layer = r.get("hidden_size", int, minimum=1), r.get("num_hidden_layers", int, minimum=1)
    d_inner = r.whole_multiple("expand", r.get("expand", (int, float)), d_model) * d_model
    return {
        "vocab_size": r.get("vocab_size", int, minimum=1),
        "d_model": d_model,
        "n_layer": n_layer,
        "norm_eps": r.get("layer_norm_epsilon", float),
        "tie_embeddings": r.get("tie_word_embeddings", bool),
        "layers": ["mamba2"] * n_layer,
        "ffn_layers": "none",
        "mixers": {"mamba2": read_mamba2(r, KEYS, d_model, d_inner)},
    }


def to_hf(m: ModelConfig, problems: list[str]) -> dict[str, Any]:
    if set(m.layers) != {"mamba2"}:
        problems.append(f"every layer must be mamba2 (got {', '.join(sorted(set(m.layers)))})")
    if set(m.ffn_layers) != {"none"}:
        problems.append(f"ffn_layers must all be none: Mamba-2 blocks have no FFN (got "
                        f"{', '.join(sorted(set(m.ffn_layers)))})")
    check_multipliers(m, problems, "Mamba2ForCausalLM")
    if problems:
        return {}
    options = m.mixers["mamba2"]
    check_mamba2(options, problems, norm_eps=m.norm_eps)
    return {
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": m.n_layer,
        "tie_word_embeddings": m.tie_embeddings, "expand": options["expand"], "residual_in_fp32": False,
        **write_mamba2(options, KEYS, m.d_model), "layer_norm_epsilon": m.norm_eps,
    }


def hf_name(name: str, m: ModelConfig) -> str:
    top = {"embed.weight": "backbone.embeddings.weight", "norm.weight": "backbone.norm_f.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, part, rest = name.split(".", 3)  # blocks.<i>.<part>.<rest>; parts: mixer_norm, mixer
    if part == "mixer":
        return f"backbone.layers.{i}.mixer.{mixer_name(rest)}"
    return f"backbone.layers.{i}.norm.{rest}"


MAMBA2 = Architecture("Mamba2ForCausalLM", "mamba2", to_ours, to_hf, hf_name)
