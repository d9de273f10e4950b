"""``NemotronHForCausalLM`` (NVIDIA, 2025) <-> our LM: each layer ONE of Mamba-2, attention or MLP.

``layers_block_type`` (or the older ``hybrid_override_pattern``: ``M`` Mamba-2, ``*`` attention,
``-`` MLP, ``E`` MoE) becomes our ``layer_pattern``; each layer is ``x + part(norm(x))``. The MLP
is ``down(relu(up(x))^2)`` (our ``relu2_mlp``); attention has no positional encoding and no bias.
Mamba-2's width is ``mamba_num_heads * mamba_head_dim`` and its dt is clamped below at
``time_step_min`` (transformers ignores ``time_step_limit``). Not supported: the MoE layers
(``E``: sigmoid-routed squared-ReLU experts with a latent projection) and the multi-token
prediction head (``num_nextn_predict_layers``), both reported by name.
"""

from __future__ import annotations

import math
from typing import Any

from hybrid_mllm.core.config import ModelConfig

from ._arch import Architecture, HFConfigReader, check_multipliers, swiglu_name
from ._attention import head_dim_of, read_head_dim, whole_heads
from ._hf_io import HFWeights
from ._mamba2 import Mamba2Keys, check_mamba2, mixer_name, read_mamba2, write_mamba2

# NemotronHConfig's defaults (transformers 5.23), used for keys a config.json leaves out.
DEFAULTS = {
    "vocab_size": 131072, "hidden_size": 4096, "tie_word_embeddings": False, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 21504, "mlp_bias": False,
    "ssm_state_size": 128, "mamba_num_heads": 128, "mamba_head_dim": 64, "n_groups": 8, "conv_kernel": 4,
    "time_step_min": 0.001, "time_step_max": 0.1, "time_step_floor": 1e-4, "use_conv_bias": True,
    "chunk_size": 128, "use_bias": False, "layer_norm_epsilon": 1e-5, "num_nextn_predict_layers": 0,
}
KEYS = Mamba2Keys(nheads="mamba_num_heads", d_state="ssm_state_size", d_conv="conv_kernel", headdim="mamba_head_dim",
                  ngroups="n_groups", chunk_size="chunk_size", conv_bias="use_conv_bias", bias="use_bias",
                  norm_eps="layer_norm_epsilon", dt_limit=None, act="mamba_hidden_act")
BLOCK_TYPES = {"linear_attention": "M", "full_attention": "*", "mlp": "-", "moe": "E"}
LEGACY = {"M": "M", "*": "*", "-": "-", "E": "E"}  # hybrid_override_pattern uses the symbols themselves


def _pattern(hf: dict[str, Any], problems: list[str]) -> str:
    if "layers_block_type" in hf or "layer_types" in hf:
        types = hf.get("layers_block_type", hf.get("layer_types"))
        bad = [t for t in types if t not in BLOCK_TYPES] if isinstance(types, list) else [types]
        if bad:
            problems.append(f"layers_block_type: unknown block types {bad} (valid: {', '.join(BLOCK_TYPES)})")
            return ""
        pattern = "".join(BLOCK_TYPES[t] for t in types)
    else:
        pattern = hf.get("hybrid_override_pattern", "M")
        if not isinstance(pattern, str) or set(pattern) - set(LEGACY):
            problems.append(f"hybrid_override_pattern: expected symbols of {''.join(LEGACY)}, got {pattern!r}")
            return ""
    if "E" in pattern:
        problems.append("layers_block_type: 'moe' layers are not supported (Nemotron-H's sigmoid-routed "
                        "squared-ReLU experts); Mamba-2, attention and mlp layers convert")
    return pattern


def to_ours(hf: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    r = HFConfigReader(hf, DEFAULTS, problems)
    d_model = r.get("hidden_size", int, minimum=1)
    pattern = _pattern(hf, problems)
    if r.get("num_nextn_predict_layers", int, minimum=0):
        problems.append("num_nextn_predict_layers: the multi-token prediction layers are not supported (use 0)")
    if hf.get("mlp_hidden_act", "relu2") != "relu2":
        problems.append(f"mlp_hidden_act: {hf['mlp_hidden_act']!r} is not supported: our relu2_mlp is 'relu2'")
    n_head = r.get("num_attention_heads", int, minimum=1)
    mamba2 = read_mamba2(r, KEYS, d_model, r.get("mamba_num_heads", int, minimum=1) * r.get("mamba_head_dim", int))
    mamba2["dt_limit"] = [mamba2["dt_min"], math.inf]  # NemotronHMamba2Mixer's time_step_limit
    return {
        "vocab_size": r.get("vocab_size", int, minimum=1),
        "d_model": d_model,
        "norm_eps": r.get("layer_norm_epsilon", float),
        "tie_embeddings": r.get("tie_word_embeddings", bool),
        "layer_pattern": pattern,
        "pattern_mlp": "relu2_mlp",
        "mixers": {"mamba2": mamba2,
                   "attention": {"n_head": n_head, "n_kv_head": hf.get("num_key_value_heads") or n_head,
                                 "head_dim": read_head_dim(r, d_model, n_head)}},
        "relu2_mlp": {"d_hidden": r.get("intermediate_size", int, minimum=1), "bias": r.get("mlp_bias", bool)},
    }


def _block_types(m: ModelConfig, problems: list[str]) -> list[str]:
    kinds = {("mamba2", "none"): "linear_attention", ("attention", "none"): "full_attention",
             ("none", "relu2_mlp"): "mlp"}
    types = [kinds.get(pair) for pair in zip(m.layers, m.ffn_layers, strict=True)]
    if None in types:
        i = types.index(None)
        problems.append(f"layers[{i}] is {m.layers[i]} with ffn {m.ffn_layers[i]}: each Nemotron-H layer is ONE "
                        "of mamba2, attention or relu2_mlp (layer_pattern M, *, -)")
    return types


def to_hf(m: ModelConfig, problems: list[str]) -> dict[str, Any]:
    types = _block_types(m, problems)
    check_multipliers(m, problems, "NemotronHForCausalLM")
    att, mamba2, mlp = m.mixers.get("attention"), m.mixers.get("mamba2"), m.ffns.get("relu2_mlp")
    if "attention" in m.layers and (att["rope"] or att["bias"]):
        problems.append("mixers.attention: rope and bias must be false: Nemotron-H's attention has neither")
    if "attention" in m.layers:
        whole_heads(att, problems, "NemotronHForCausalLM")
    if "mamba2" in m.layers:
        check_mamba2(mamba2, problems, norm_eps=m.norm_eps)
        if list(mamba2["dt_limit"]) != [mamba2["dt_min"], math.inf]:
            problems.append(f"mixers.mamba2.dt_limit must be [dt_min, inf] = [{mamba2['dt_min']}, inf]: "
                            "Nemotron-H clamps dt below at time_step_min")
    if problems:
        return {}
    out = {"vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": m.n_layer,
           "layers_block_type": types, "tie_word_embeddings": m.tie_embeddings, "layer_norm_epsilon": m.norm_eps,
           "mlp_hidden_act": "relu2", "num_nextn_predict_layers": 0, "residual_in_fp32": False}
    if att is not None:
        out.update(num_attention_heads=att["n_head"], num_key_value_heads=att["n_kv_head"] or att["n_head"],
                   head_dim=head_dim_of(att, m.d_model), attention_bias=False)
    if mamba2 is not None:
        out.update(write_mamba2(mamba2, KEYS, m.d_model), expand=mamba2["expand"])
    if mlp is not None:
        out.update(intermediate_size=mlp["d_hidden"] or 4 * m.d_model, mlp_bias=mlp["bias"])
    return out


def hf_name(name: str, m: ModelConfig) -> str:
    top = {"embed.weight": "backbone.embeddings.weight", "norm.weight": "backbone.norm_f.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, part, rest = name.split(".", 3)  # blocks.<i>.<part>.<rest>
    layer = f"backbone.layers.{i}."
    if part in ("mixer_norm", "ffn_norm"):  # a layer has one part, and one norm
        return layer + "norm." + rest
    if part == "ffn":
        return layer + "mixer." + swiglu_name(rest)
    return layer + "mixer." + (mixer_name(rest) if m.layers[int(i)] == "mamba2" else rest)


def model_prefix(weights: HFWeights) -> None:
    """Also read a checkpoint saved under transformers' module names (``model.`` for ``backbone.``);
    not a LLaVA's, whose ``model.`` is the multimodal model's."""
    if "model.embeddings.weight" not in weights.names():
        return
    for name in sorted(weights.names()):
        if name.startswith("model."):
            weights.unpack(name, {"backbone." + name.removeprefix("model."): ()})


NEMOTRON_H = Architecture("NemotronHForCausalLM", "nemotron_h", to_ours, to_hf, hf_name, adapt=model_prefix)
