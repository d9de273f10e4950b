"""What each supported Hugging Face architecture provides, and the helpers they share.

An `Architecture` maps both ways between a Hugging Face ``config.json`` and our
`ModelConfig`, and names every tensor of our model in the Hugging Face checkpoint.
Problems are collected, not raised, so that one error lists all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hybrid_mllm.core.config import ModelConfig
from hybrid_mllm.core.schema import is_int

from ._hf_io import HFWeights

# Our Mamba mixer's tensors under their Hugging Face names (MambaMixer / JambaMambaMixer);
# the others (in_proj, x_proj, dt_proj, out_proj, A_log, D) have the same name in both.
MAMBA_TENSORS = {
    "conv_weight": "conv1d.weight",  # ours (D, K), theirs nn.Conv1d's (D, 1, K)
    "conv_bias": "conv1d.bias",
    "dt_norm.weight": "dt_layernorm.weight",
    "B_norm.weight": "b_layernorm.weight",
    "C_norm.weight": "c_layernorm.weight",
}
SWIGLU_TENSORS = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


@dataclass(frozen=True)
class Architecture:
    """One ``architectures`` entry of config.json.

    to_ours(hf, problems) -> our raw ``model:`` mapping (validated afterwards by parse_config)
    to_hf(model_config, problems) -> config.json (without architectures/model_type/dtype)
    hf_name(our_tensor_name, model_config) -> the tensor's name in their checkpoint
    adapt: rewrite a checkpoint's tensor layout to the one `hf_name` expects (None: as stored)
    ignored: suffixes of tensors their loader drops too (e.g. a saved rotary inv_freq buffer)
    fold(hf, model_config) -> {our tensor: factor}: a constant their forward multiplies a
        projection by and ours has no option for, folded into the weight when read (to_hf then
        writes the multiplier as 1, or as what ours computes); a factor is a float or a tensor
        that broadcasts against the weight (per output row: (out, 1) for a weight, (out,) for a bias)
    pack(tensors): the inverse of `adapt` on export: fuse the tensors `hf_name` names separately
        into their checkpoint's packed ones, in place
    llava_ignores: config.json keys transformers' LLaVA does not apply when this is its language
        model (it embeds the tokens itself, passing embeddings, and has its own lm_head): a LLaVA's
        text_config is read as if they were absent
    """

    name: str
    model_type: str
    to_ours: Callable[[dict[str, Any], list[str]], dict[str, Any]]
    to_hf: Callable[[ModelConfig, list[str]], dict[str, Any]]
    hf_name: Callable[[str, ModelConfig], str]
    adapt: Callable[[HFWeights], None] | None = None
    ignored: tuple[str, ...] = ()
    fold: Callable[[dict[str, Any], ModelConfig], dict[str, float | torch.Tensor]] | None = None
    pack: Callable[[dict[str, Any]], None] | None = None
    llava_ignores: tuple[str, ...] = ()


def apply_fold(params: dict[str, torch.Tensor], factors: dict[str, float | torch.Tensor], prefix: str = "") -> None:
    """Multiply each named tensor (``prefix + name`` in `params`) by its factor, in place."""
    with torch.no_grad():
        for name, factor in factors.items():
            param = params[prefix + name]
            param.mul_(factor.to(param.device, param.dtype) if isinstance(factor, torch.Tensor) else factor)


def hf_shape(our_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The tensor's shape in their checkpoint: only the depthwise conv differs, (D, K) -> (D, 1, K)
    (a mixer's ``conv_weight``, or a parallel mixer's part's)."""
    return (shape[0], 1, shape[1]) if our_name.endswith(".conv_weight") and len(shape) == 2 else shape


def swiglu_name(rest: str) -> str:
    """``gate.weight`` -> ``gate_proj.weight``, ``experts.3.up.weight`` -> ``experts.3.up_proj.weight``."""
    *head, module, param = rest.split(".")
    return ".".join([*head, SWIGLU_TENSORS.get(module, module), param])


class HFConfigReader:
    """Typed reads of config.json with their class defaults; bad values become problems."""

    def __init__(self, hf: dict[str, Any], defaults: dict[str, Any], problems: list[str]):
        self.hf, self.defaults, self.problems = hf, defaults, problems

    def get(self, key: str, typ: type | tuple[type, ...], *, minimum: float | None = None) -> Any:
        value = self.hf.get(key, self.defaults[key])
        if typ is float and is_int(value):
            value = float(value)
        if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
            names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            self.problems.append(f"{key}: expected {names}, got {value!r}")
            return self.defaults[key]
        if minimum is not None and value < minimum:
            self.problems.append(f"{key}: must be >= {minimum}, got {value!r}")
            return self.defaults[key]
        return value

    def silu(self, key: str = "hidden_act") -> None:
        act = self.hf.get(key, "silu")
        if act != "silu":
            self.problems.append(f"{key}: {act!r} is not supported: our SwiGLU and Mamba use 'silu'")

    def whole_multiple(self, key: str, value: float, of: int) -> int:
        """`value` (e.g. expand) as an int, or a problem: our Mamba takes an integer expand."""
        if float(value) != int(value):
            self.problems.append(f"{key}: {value!r} is not supported: d_inner must be an integer multiple "
                                 f"of hidden_size ({of})")
        return int(value)


def dt_rank(value: int | str, d_model: int) -> int:
    """Mamba's ``dt_rank: "auto"`` is ceil(d_model / 16), as in both papers."""
    return math.ceil(d_model / 16) if value == "auto" else value


def fit_period(hits: list[bool]) -> tuple[int, int] | None:
    """The smallest (period, offset) with ``hits[i] == (i % period == offset)``, or None.

    Jamba's config describes its layer plan this way; a plan with no hit at all gets a
    period longer than the model (offset = n_layer), as transformers' rule allows.
    """
    n = len(hits)
    for period in range(1, n + 2):
        for offset in range(period):
            if all(hit == (i % period == offset) for i, hit in enumerate(hits)):
                return period, offset
    return None


MULTIPLIERS = ("embedding_multiplier", "residual_multiplier", "logits_multiplier")


def check_multipliers(m: ModelConfig, problems: list[str], arch: str, *, allowed: tuple[str, ...] = ()) -> None:
    """A multiplier the architecture has no key for must be 1 (it would be lost on export)."""
    for key in MULTIPLIERS:
        if key not in allowed and getattr(m, key) != 1.0:
            problems.append(f"{key} must be 1.0: {arch} has no such multiplier (got {getattr(m, key)})")
