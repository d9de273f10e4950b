"""``FalconH1ForCausalLM`` (TII, 2025) <-> our LM: every layer runs Mamba-2 and attention side by
side on the same normed input and adds them (our ``parallel`` mixer), then a SwiGLU MLP.

Mamba-2's width is ``mamba_d_ssm`` (our ``d_inner``: it need not be a multiple of hidden_size),
its gated RMSNorm optional (``mamba_rms_norm``, ``mamba_norm_before_gate``); attention has
``head_dim`` and RoPE over the whole head. Falcon-H1's muP multipliers: ``embedding_multiplier``
and ``lm_head_multiplier`` are our ``embedding_multiplier`` / ``logits_multiplier``; the others
scale a projection's input or output and are folded into its weights when read (`fold`):
``attention_in_multiplier`` (q, k, v weights), ``key_multiplier`` (k), ``attention_out_multiplier``
(o), ``ssm_in_multiplier`` (in_proj's weight), ``ssm_multipliers`` (in_proj's rows z, x, B, C, dt:
transformers' ``mup_vector``, applied to in_proj's output before the split, so before dt_bias and
every nonlinearity), ``ssm_out_multiplier`` (out_proj) and ``mlp_multipliers`` (gate, down). Exports
write them as 1. Not supported, by name: ``projectors_bias`` differing from ``mamba_proj_bias``
(our Mamba-2 has one bias option for in_proj and out_proj).
"""

from __future__ import annotations

from typing import Any

import torch

from hybrid_mllm.core.config import ModelConfig
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.schema import check_options

from . import bamba
from ._arch import Architecture, HFConfigReader, check_multipliers
from ._attention import read_attention, write_attention
from ._mamba2 import Mamba2Keys, mixer_name, read_mamba2, write_mamba2

ARCH = "FalconH1ForCausalLM"
# FalconH1Config's defaults (transformers 5.23), used for keys a config.json leaves out.
DEFAULTS = {
    "vocab_size": 128000, "tie_word_embeddings": False, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "rms_norm_eps": 1e-5, "attention_bias": False,
    "mlp_bias": False, "mamba_d_ssm": 1024, "mamba_n_heads": 128, "mamba_d_head": "auto", "mamba_n_groups": 1,
    "mamba_d_state": 256, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256, "mamba_conv_bias": True,
    "mamba_proj_bias": False, "mamba_norm_before_gate": True, "mamba_rms_norm": False, "projectors_bias": False,
    "time_step_limit": (0.0, float("inf")), "embedding_multiplier": 1.0, "lm_head_multiplier": 1.0,
    "key_multiplier": 1.0, "attention_in_multiplier": 1.0, "attention_out_multiplier": 1.0,
    "ssm_in_multiplier": 1.0, "ssm_out_multiplier": 1.0, "mlp_multipliers": [1.0, 1.0],
    "ssm_multipliers": [1.0] * 5,
}
KEYS = Mamba2Keys(nheads="mamba_n_heads", d_state="mamba_d_state", d_conv="mamba_d_conv", headdim="mamba_d_head",
                  ngroups="mamba_n_groups", chunk_size="mamba_chunk_size", conv_bias="mamba_conv_bias",
                  bias="mamba_proj_bias", norm_eps="rms_norm_eps", dt_min=None, dt_max=None, dt_init_floor=None)
FOLDED = ("attention_in_multiplier", "key_multiplier", "attention_out_multiplier", "ssm_in_multiplier",
          "ssm_out_multiplier")
LISTS = {"mlp_multipliers": 2, "ssm_multipliers": 5}  # (gate, down); (z, x, B, C, dt)
PARTS = ("mamba2", "attention")  # their order of the sum: mamba + attention


def _multiplier_list(r: HFConfigReader, key: str) -> list[float]:
    value = r.hf.get(key) or r.defaults[key]  # FalconH1Config: None means all 1
    if (not isinstance(value, list) or len(value) != LISTS[key]
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        r.problems.append(f"{key}: expected a list of {LISTS[key]} numbers, got {value!r}")
        return [1.0] * LISTS[key]
    return [float(v) for v in value]


def _d_inner(r: HFConfigReader, d_model: int) -> int:
    """mamba_d_ssm, or mamba_expand x hidden_size when it is null (as FalconH1Config computes it)."""
    if r.hf.get("mamba_d_ssm", DEFAULTS["mamba_d_ssm"]) is None:
        return int(r.get("mamba_expand", (int, float)) * d_model)
    return r.get("mamba_d_ssm", int, minimum=1)


def _mamba2(r: HFConfigReader, d_model: int) -> dict[str, Any]:
    d_inner = _d_inner(r, d_model)
    if r.hf.get("mamba_d_head", "auto") == "auto":  # FalconH1Config: d_ssm // mamba_n_heads
        r.hf = {**r.hf, "mamba_d_head": d_inner // max(r.get("mamba_n_heads", int, minimum=1), 1)}
    mamba2 = read_mamba2(r, KEYS, d_model, d_inner, any_width=True)
    mamba2.update(rmsnorm=r.get("mamba_rms_norm", bool), norm_before_gate=r.get("mamba_norm_before_gate", bool))
    if r.get("projectors_bias", bool) != mamba2["bias"]:
        r.problems.append(f"projectors_bias ({r.hf.get('projectors_bias')}) must equal mamba_proj_bias "
                          f"({mamba2['bias']}): our Mamba-2 has one bias option for in_proj and out_proj")
    return mamba2


def to_ours(hf: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    r = HFConfigReader(hf, DEFAULTS, problems)
    r.silu()
    d_model, n_layer = r.get("hidden_size", int, minimum=1), r.get("num_hidden_layers", int, minimum=1)
    for key in FOLDED:
        r.get(key, float)  # folded into the weights by `fold`; read here to report a bad value
    for key in LISTS:
        _multiplier_list(r, key)
    parts = {"mamba2": _mamba2(r, d_model), "attention": read_attention(r, d_model, partial_default=None)}
    return {
        "vocab_size": r.get("vocab_size", int, minimum=1),
        "d_model": d_model,
        "n_layer": n_layer,
        "norm_eps": r.get("rms_norm_eps", float),
        "tie_embeddings": r.get("tie_word_embeddings", bool),
        "embedding_multiplier": r.get("embedding_multiplier", float),
        "logits_multiplier": r.get("lm_head_multiplier", float),
        "layers": ["parallel"] * n_layer,
        "ffn_layers": "mlp",
        "mixers": {"parallel": {"parts": parts}},
        "mlp": {"d_hidden": r.get("intermediate_size", int, minimum=1), "bias": r.get("mlp_bias", bool)},
    }


def _mup_vector(ssm: list[float], mamba2: dict[str, Any], d_model: int) -> torch.Tensor:
    """(d_inner + conv_dim + nheads,): the factor of each of in_proj's rows z | x | B | C | dt."""
    d_inner = mamba2.get("d_inner") or mamba2["expand"] * d_model
    sizes = (d_inner, d_inner, mamba2["ngroups"] * mamba2["d_state"], mamba2["ngroups"] * mamba2["d_state"],
             d_inner // mamba2["headdim"])
    return torch.cat([torch.full((n,), factor, dtype=torch.float64) for n, factor in zip(sizes, ssm, strict=True)])


def fold(hf: dict[str, Any], m: ModelConfig) -> dict[str, float | torch.Tensor]:
    """Every multiplier that scales a projection, as factors of our tensors (see the module doc)."""
    r = HFConfigReader(hf, DEFAULTS, [])  # to_ours has reported bad values
    att_in, key, att_out, ssm_in, ssm_out = (r.get(k, float) for k in FOLDED)
    gate, down = _multiplier_list(r, "mlp_multipliers")
    parts = m.mixers["parallel"]["parts"]
    mup = _mup_vector(_multiplier_list(r, "ssm_multipliers"), parts["mamba2"], m.d_model)
    per_layer = {"mamba2.in_proj.weight": mup[:, None] * ssm_in, "mamba2.out_proj.weight": ssm_out,
                 "attention.q_proj.weight": att_in, "attention.k_proj.weight": att_in * key,
                 "attention.v_proj.weight": att_in, "attention.o_proj.weight": att_out}
    biases = {"mamba2.in_proj.bias": mup, "mamba2.out_proj.bias": ssm_out} if parts["mamba2"]["bias"] else {}
    if parts["attention"]["bias"]:  # the input multiplier scales x, not the bias; key and output ones both
        biases.update({"attention.k_proj.bias": key, "attention.o_proj.bias": att_out})
    ffn = {"gate.weight": gate, "down.weight": down}
    if m.ffns["mlp"]["bias"]:
        ffn.update({"gate.bias": gate, "down.bias": down})
    out = {}
    for i in range(m.n_layer):
        out.update({f"blocks.{i}.mixer.parts.{name}": f for name, f in {**per_layer, **biases}.items()})
        out.update({f"blocks.{i}.ffn.{name}": f for name, f in ffn.items()})
    return {name: f.float() if isinstance(f, torch.Tensor) else f for name, f in out.items()
            if isinstance(f, torch.Tensor) or f != 1.0}


def _parts(m: ModelConfig, problems: list[str]) -> dict[str, dict[str, Any]]:
    """The parallel mixer's part options with their defaults filled in (YAML may leave them out)."""
    parts = m.mixers["parallel"]["parts"]
    if not isinstance(parts, dict) or set(parts) != set(PARTS):
        problems.append(f"mixers.parallel.parts must be {' and '.join(PARTS)} (got {', '.join(parts)})")
        return {}
    resolved = {}
    for name in PARTS:
        resolved[name], found = check_options(get_registry().get("mixer", name), parts[name],
                                              f"mixers.parallel.parts.{name}")
        problems.extend(found)
    return resolved


def _write_mamba2(mamba2: dict[str, Any], m: ModelConfig, problems: list[str]) -> dict[str, Any]:
    if mamba2["rmsnorm"] and mamba2["norm_eps"] != m.norm_eps:
        problems.append(f"mixers.parallel.parts.mamba2.norm_eps ({mamba2['norm_eps']}) must equal norm_eps "
                        f"({m.norm_eps}): Falcon-H1 has one rms_norm_eps")
    d_inner = mamba2.get("d_inner") or mamba2["expand"] * m.d_model
    return {**write_mamba2(mamba2, KEYS, m.d_model), "mamba_d_ssm": d_inner, "mamba_expand": mamba2["expand"],
            "mamba_rms_norm": mamba2["rmsnorm"], "mamba_norm_before_gate": mamba2["norm_before_gate"],
            "projectors_bias": mamba2["bias"]}


def to_hf(m: ModelConfig, problems: list[str]) -> dict[str, Any]:
    if set(m.layers) != {"parallel"} or set(m.ffn_layers) != {"mlp"}:
        problems.append("every layer must be parallel (mamba2 + attention) with an mlp")
        return {}
    check_multipliers(m, problems, ARCH, allowed=("embedding_multiplier", "logits_multiplier"))
    parts = _parts(m, problems)
    if problems:
        return {}
    out = {"vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": m.n_layer,
           "tie_word_embeddings": m.tie_embeddings, "rms_norm_eps": m.norm_eps,
           "intermediate_size": m.ffns["mlp"]["d_hidden"] or 4 * m.d_model, "mlp_bias": m.ffns["mlp"]["bias"],
           "embedding_multiplier": m.embedding_multiplier, "lm_head_multiplier": m.logits_multiplier,
           **dict.fromkeys(FOLDED, 1.0), **{key: [1.0] * n for key, n in LISTS.items()}}
    out.update(_write_mamba2(parts["mamba2"], m, problems))
    out.update(write_attention(parts["attention"], m.d_model, problems, ARCH, partial=False))
    return out


def hf_name(name: str, m: ModelConfig) -> str:
    """Bamba's names (embedding, norms, MLP, head), and each layer's two mixers under mamba. / self_attn."""
    if name.startswith("blocks.") and name.split(".")[2] == "mixer":  # blocks.<i>.mixer.parts.<kind>.<tensor>
        _, i, _, _, kind, tensor = name.split(".", 5)
        layer = f"model.layers.{i}."
        return layer + ("mamba." + mixer_name(tensor) if kind == "mamba2" else "self_attn." + tensor)
    return bamba.hf_name(name, m)


# In a LLaVA, FalconH1Model gets embeddings (its embedding_multiplier scales only the ids it embeds
# itself) and LLaVA's lm_head computes the logits: neither multiplier applies there.
FALCON_H1 = Architecture(ARCH, "falcon_h1", to_ours, to_hf, hf_name, fold=fold,
                         llava_ignores=("embedding_multiplier", "lm_head_multiplier"))
