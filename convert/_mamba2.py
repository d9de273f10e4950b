"""The Mamba-2 mixer's options under each family's config.json keys, both ways.

Every Mamba-2 family names the same numbers differently (``state_size``, ``ssm_state_size``,
``mamba_d_state`` ...); a family gives its `Mamba2Keys` and shares the reading, the checks
(heads x headdim = d_inner, an integer expand, ngroups dividing the heads) and the writing.
Our mixer's tensors have transformers' names except the depthwise conv (``conv1d``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._arch import HFConfigReader

TENSORS = {"conv_weight": "conv1d.weight", "conv_bias": "conv1d.bias"}  # ours -> theirs, inside the mixer
INTS = ("d_state", "d_conv", "headdim", "ngroups", "chunk_size")
BOOLS = ("conv_bias", "bias")
FLOATS = ("dt_min", "dt_max", "dt_init_floor", "norm_eps")


@dataclass(frozen=True)
class Mamba2Keys:
    """Their config.json key for each of our mamba2 options (None: the family has no such key)."""

    nheads: str
    d_state: str
    d_conv: str
    headdim: str
    ngroups: str
    chunk_size: str
    conv_bias: str
    bias: str
    norm_eps: str
    dt_min: str | None = "time_step_min"
    dt_max: str | None = "time_step_max"
    dt_init_floor: str | None = "time_step_floor"
    dt_limit: str | None = "time_step_limit"
    act: str = "hidden_act"


def mixer_name(rest: str) -> str:
    """Our mamba2 tensor (``conv_weight``, ``in_proj.weight`` ...) -> its name in their mixer."""
    return TENSORS.get(rest, rest)


def read_mamba2(r: HFConfigReader, keys: Mamba2Keys, d_model: int, d_inner: int, *,
                any_width: bool = False) -> dict[str, Any]:
    """Our ``mixers.mamba2`` options from their config; `d_inner` is their mixer width: an integer
    ``expand`` times d_model, or with `any_width` (Falcon-H1) our ``d_inner`` where it is not."""
    act = r.hf.get(keys.act, "silu")
    if act != "silu":
        r.problems.append(f"{keys.act}: {act!r} is not supported: our Mamba-2 uses 'silu'")
    out = {}
    for ours in (*INTS, *BOOLS, *FLOATS):
        theirs = getattr(keys, ours)
        if theirs is not None:
            typ = int if ours in INTS else bool if ours in BOOLS else float
            out[ours] = r.get(theirs, typ, minimum=1 if typ is int else None)
    nheads = r.get(keys.nheads, int, minimum=1)
    if nheads * out["headdim"] != d_inner:
        r.problems.append(f"{keys.nheads}: {keys.nheads} x {keys.headdim} ({nheads} x {out['headdim']}) must equal "
                          f"the mixer width {d_inner}")
    if nheads % out["ngroups"]:
        r.problems.append(f"{keys.ngroups}: {out['ngroups']} groups must divide the {nheads} heads ({keys.nheads})")
    if any_width and d_inner % d_model:
        out["d_inner"] = d_inner
    else:
        out["expand"] = r.whole_multiple(keys.nheads, d_inner / d_model, d_model)
    if keys.dt_limit is not None:
        out["dt_limit"] = _dt_limit(r, keys.dt_limit)
    return {**out, "rmsnorm": True, "norm_before_gate": False}


def _json_float(value: Any) -> Any:
    """transformers 5 writes a non-finite float as ``{"__float__": "Infinity"}``."""
    if isinstance(value, dict) and set(value) == {"__float__"} and isinstance(value["__float__"], str):
        try:
            return float(value["__float__"])
        except ValueError:
            return value
    return value


def _dt_limit(r: HFConfigReader, key: str) -> list[float]:
    value = r.hf.get(key, r.defaults[key])
    if isinstance(value, (list, tuple)):
        value = [_json_float(v) for v in value]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        r.problems.append(f"{key}: expected a pair of numbers [low, high], got {value!r}")
        return [0.0, math.inf]
    return [float(v) for v in value]


def check_mamba2(options: dict[str, Any], problems: list[str], *, norm_eps: float) -> None:
    """What every family's Mamba-2 is (but Falcon-H1's): a gated RMSNorm after the gate, one norm
    epsilon, a width of an integer expand x hidden_size."""
    if options.get("d_inner") is not None:
        problems.append("mixers.mamba2.d_inner must be null: the family's Mamba-2 width is an integer "
                        "expand x hidden_size (set expand)")
    if not options["rmsnorm"] or options["norm_before_gate"]:
        problems.append("mixers.mamba2: rmsnorm must be true and norm_before_gate false (norm(y * silu(z)))")
    if options["norm_eps"] != norm_eps:
        problems.append(f"mixers.mamba2.norm_eps ({options['norm_eps']}) must equal norm_eps ({norm_eps}): "
                        "the family has one epsilon")


def write_mamba2(options: dict[str, Any], keys: Mamba2Keys, d_model: int) -> dict[str, Any]:
    """Their config.json keys for our ``mixers.mamba2`` options."""
    out = {getattr(keys, ours): options[ours] for ours in (*INTS, *BOOLS, *FLOATS, "dt_limit")
           if getattr(keys, ours, None) is not None}
    out[keys.nheads] = (options.get("d_inner") or options["expand"] * d_model) // options["headdim"]
    out[keys.act] = "silu"
    if keys.dt_limit is not None:
        out[keys.dt_limit] = list(options["dt_limit"])
    return out
