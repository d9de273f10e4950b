"""``BambaForCausalLM`` (IBM, 2024) <-> our LM: Mamba-2 and attention layers, each followed by a SwiGLU MLP.

Layer i is attention where ``i`` is in ``attn_layer_indices``, else Mamba-2 (width
``mamba_expand * hidden_size``); every norm uses ``rms_norm_eps``. Bamba's attention uses
RoPE on the first ``head_dim x partial_rotary_factor`` dims of each head (0.5 unless
``rope_parameters`` says otherwise): our attention's ``rotary_dim``. ``head_dim`` (default
hidden_size / num_attention_heads) is our ``head_dim``.
"""

from __future__ import annotations

from typing import Any

from hybrid_mllm.core.config import ModelConfig

from ._arch import Architecture, HFConfigReader, check_multipliers, swiglu_name
from ._attention import read_attention, write_attention
from ._mamba2 import Mamba2Keys, check_mamba2, mixer_name, read_mamba2, write_mamba2

# BambaConfig's defaults (transformers 5.23), used for keys a config.json leaves out.
DEFAULTS = {
    "vocab_size": 128000, "tie_word_embeddings": False, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "rms_norm_eps": 1e-5, "mamba_n_heads": 128, "mamba_d_head": "auto",
    "mamba_n_groups": 1, "mamba_d_state": 256, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256,
    "mamba_conv_bias": True, "mamba_proj_bias": False, "time_step_limit": (0.0, float("inf")), "mlp_bias": False,
    "num_attention_heads": 32, "attention_bias": False,
}
PARTIAL_ROTARY_FACTOR = 0.5  # BambaConfig's, when rope_parameters has none
KEYS = Mamba2Keys(nheads="mamba_n_heads", d_state="mamba_d_state", d_conv="mamba_d_conv", headdim="mamba_d_head",
                  ngroups="mamba_n_groups", chunk_size="mamba_chunk_size", conv_bias="mamba_conv_bias",
                  bias="mamba_proj_bias", norm_eps="rms_norm_eps", dt_min=None, dt_max=None, dt_init_floor=None)


def _layers(hf: dict[str, Any], n_layer: int, problems: list[str]) -> list[str]:
    indices = hf.get("attn_layer_indices") or []
    if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_layer
                                                for i in indices):
        problems.append(f"attn_layer_indices: expected a list of layer indices in [0, {n_layer}), got {indices!r}")
        indices = []
    return ["attention" if i in indices else "mamba2" for i in range(n_layer)]


def to_ours(hf: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    r = HFConfigReader(hf, DEFAULTS, problems)
    r.silu()
    d_model, n_layer = r.get("hidden_size", int, minimum=1), r.get("num_hidden_layers", int, minimum=1)
    d_inner = r.whole_multiple("mamba_expand", r.get("mamba_expand", (int, float)), d_model) * d_model
    if hf.get("mamba_d_head", "auto") == "auto":  # BambaConfig: expand * hidden_size // mamba_n_heads
        hf = {**hf, "mamba_d_head": d_inner // max(r.get("mamba_n_heads", int, minimum=1), 1)}
    r = HFConfigReader(hf, DEFAULTS, problems)
    layers = _layers(hf, n_layer, problems)
    mixers = {}
    if "mamba2" in layers:
        mixers["mamba2"] = read_mamba2(r, KEYS, d_model, d_inner)
    if "attention" in layers:
        mixers["attention"] = read_attention(r, d_model, partial_default=PARTIAL_ROTARY_FACTOR)
    return {
        "vocab_size": r.get("vocab_size", int, minimum=1),
        "d_model": d_model,
        "n_layer": n_layer,
        "norm_eps": r.get("rms_norm_eps", float),
        "tie_embeddings": r.get("tie_word_embeddings", bool),
        "layers": layers,
        "ffn_layers": "mlp",
        "mixers": mixers,
        "mlp": {"d_hidden": r.get("intermediate_size", int, minimum=1), "bias": r.get("mlp_bias", bool)},
    }


def to_hf(m: ModelConfig, problems: list[str]) -> dict[str, Any]:
    if set(m.layers) - {"mamba2", "attention"}:
        problems.append(f"every layer must be mamba2 or attention (got {', '.join(sorted(set(m.layers)))})")
    if set(m.ffn_layers) != {"mlp"}:
        problems.append(f"ffn_layers must all be mlp (got {', '.join(sorted(set(m.ffn_layers)))})")
    check_multipliers(m, problems, "BambaForCausalLM")
    if problems:
        return {}
    out = {"vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": m.n_layer,
           "tie_word_embeddings": m.tie_embeddings, "rms_norm_eps": m.norm_eps,
           "attn_layer_indices": [i for i, kind in enumerate(m.layers) if kind == "attention"] or None,
           "intermediate_size": m.ffns["mlp"]["d_hidden"] or 4 * m.d_model, "mlp_bias": m.ffns["mlp"]["bias"]}
    if "mamba2" in m.layers:
        mamba2 = m.mixers["mamba2"]
        check_mamba2(mamba2, problems, norm_eps=m.norm_eps)
        out.update(write_mamba2(mamba2, KEYS, m.d_model), mamba_expand=mamba2["expand"])
    if "attention" in m.layers:
        out.update(write_attention(m.mixers["attention"], m.d_model, problems, "BambaForCausalLM", partial=True))
    return out


def hf_name(name: str, m: ModelConfig) -> str:
    top = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.final_layernorm.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, part, rest = name.split(".", 3)  # blocks.<i>.<part>.<rest>
    layer = f"model.layers.{i}."
    if part == "mixer":
        return layer + ("mamba." + mixer_name(rest) if m.layers[int(i)] == "mamba2" else "self_attn." + rest)
    if part == "ffn":
        return layer + "feed_forward." + swiglu_name(rest)
    return layer + {"mixer_norm": "input_layernorm", "ffn_norm": "pre_ff_layernorm"}[part] + "." + rest


BAMBA = Architecture("BambaForCausalLM", "bamba", to_ours, to_hf, hf_name)
