"""Our attention mixer's options under the config.json keys of Bamba and Falcon-H1, both ways
(and the head width of Llama and Nemotron-H).

Both name the heads ``num_attention_heads`` / ``num_key_value_heads`` / ``head_dim`` (None:
hidden_size / heads), the bias ``attention_bias``, and RoPE ``rope_parameters`` (``rope_theta``,
and for Bamba ``partial_rotary_factor``: the first ``head_dim x factor`` dims of each head
rotate, our ``rotary_dim``). Older config.json files keep ``rope_theta`` at the top level.
"""

from __future__ import annotations

from typing import Any

from ._arch import HFConfigReader

def head_dim_of(att: dict[str, Any], d_model: int) -> int:
    """Our attention's head width: its ``head_dim`` option, or d_model / n_head."""
    return att.get("head_dim") or d_model // att["n_head"]


def plain_heads(att: dict[str, Any], d_model: int, problems: list[str], arch: str) -> None:
    """For an architecture whose heads are hidden_size / num_attention_heads wide, rotated whole."""
    if head_dim_of(att, d_model) * att["n_head"] != d_model:
        problems.append(f"mixers.attention.head_dim ({att['head_dim']}) must be d_model / n_head "
                        f"({d_model} / {att['n_head']}): {arch} has no head_dim")
    whole_heads(att, problems, arch)


def whole_heads(att: dict[str, Any], problems: list[str], arch: str) -> None:
    """For an architecture that rotates whole heads (or none)."""
    if att.get("rotary_dim") is not None:
        problems.append(f"mixers.attention.rotary_dim must be null: {arch} rotates whole heads")


def read_head_dim(r: HFConfigReader, d_model: int, n_head: int) -> int | None:
    """Our ``head_dim`` option from config.json's ``head_dim`` (or the family's default; absent or
    null: hidden_size / heads), None when it is hidden_size / heads."""
    head_dim = r.hf.get("head_dim") or r.defaults.get("head_dim") or d_model // max(n_head, 1)
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
        r.problems.append(f"head_dim: expected a positive int, got {head_dim!r}")
        return None
    return None if head_dim * n_head == d_model else head_dim


def _rope(r: HFConfigReader, partial_default: float | None) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor); with `partial_default` None the factor is not read (1)."""
    rope = r.hf.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        r.problems.append(f"rope_parameters: expected a mapping, got {rope!r}")
        rope = {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        r.problems.append(f"rope_parameters: rope_type {rope_type!r} is not supported: only plain RoPE maps")
    theta = rope.get("rope_theta", r.hf.get("rope_theta", 10000.0))
    factor = 1.0 if partial_default is None else rope.get("partial_rotary_factor", partial_default)
    for key, value in (("rope_theta", theta), ("partial_rotary_factor", factor)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            r.problems.append(f"rope_parameters.{key}: expected a positive number, got {value!r}")
            return 10000.0, 1.0
    return float(theta), float(factor)


def read_attention(r: HFConfigReader, d_model: int, *, partial_default: float | None) -> dict[str, Any]:
    """Our ``mixers.attention`` options (RoPE on); `partial_default`: the family's
    partial_rotary_factor when config.json has none (None: the family rotates whole heads)."""
    n_head = r.get("num_attention_heads", int, minimum=1)
    head_dim = read_head_dim(r, d_model, n_head) or d_model // n_head
    theta, factor = _rope(r, partial_default)
    rotary_dim = int(head_dim * factor)  # as transformers computes it
    if factor > 1 or rotary_dim < 2 or rotary_dim % 2:
        r.problems.append(f"partial_rotary_factor: {factor} x head_dim {head_dim} = {head_dim * factor:g} rotated "
                          "dims is not supported: it must give an even number between 2 and head_dim")
        rotary_dim = head_dim
    return {"n_head": n_head, "n_kv_head": r.hf.get("num_key_value_heads") or n_head,
            "head_dim": None if head_dim * n_head == d_model else head_dim, "rope": True, "rope_theta": theta,
            "rotary_dim": None if rotary_dim == head_dim else rotary_dim, "bias": r.get("attention_bias", bool)}


def write_attention(att: dict[str, Any], d_model: int, problems: list[str], arch: str, *,
                    partial: bool) -> dict[str, Any]:
    """Their config.json keys for our ``mixers.attention`` options; `partial`: the family has
    partial_rotary_factor (else rotary_dim must be null)."""
    head_dim = head_dim_of(att, d_model)
    rotary_dim = att.get("rotary_dim") or head_dim
    if not att["rope"]:
        problems.append(f"mixers.attention.rope must be true: {arch}'s attention uses RoPE")
    rope = {"rope_type": "default", "rope_theta": att["rope_theta"]}
    if partial:
        rope["partial_rotary_factor"] = factor = rotary_dim / head_dim
        if int(head_dim * factor) != rotary_dim:  # transformers' int(head_dim * factor) must give it back
            problems.append(f"mixers.attention.rotary_dim ({rotary_dim}) is not int(head_dim x factor) for any "
                            f"float factor with head_dim {head_dim}")
    elif rotary_dim != head_dim:
        problems.append(f"mixers.attention.rotary_dim must be null: {arch} rotates whole heads")
    return {"num_attention_heads": att["n_head"], "num_key_value_heads": att["n_kv_head"] or att["n_head"],
            "head_dim": head_dim, "attention_bias": att["bias"], "rope_parameters": rope}
