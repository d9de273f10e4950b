"""Nemotron-H's layer pattern (``hybrid_override_pattern``): one symbol per layer.

```yaml
model:
  layer_pattern: "M-M*-ME"   # each layer is ONE of a mixer or an FFN, with its own pre-norm
  ssm_mixer: mamba2          # the mixer of M (default mamba2)
  attn_mixer: attention      # the mixer of * (default attention)
  pattern_mlp: relu2_mlp     # the FFN of - (default mlp)
  pattern_moe: moe           # the FFN of E (default moe)
```
A mixer layer has no FFN (``none``) and an FFN layer no mixer (``none``): the pattern expands
to the explicit ``layers`` / ``ffn_layers`` lists that every other plan gives.
"""

from __future__ import annotations

from typing import Any

from .schema import describe
from .suggest import unknown

PATTERN_KEYS = ("layer_pattern", "pattern_mlp", "pattern_moe")
NONE = "none"  # no mixer / no FFN in a layer
# symbol -> (the plan key naming its component, the default, True when it is a mixer)
SYMBOLS = {"M": ("ssm_mixer", "mamba2", True), "*": ("attn_mixer", "attention", True),
           "-": ("pattern_mlp", "mlp", False), "E": ("pattern_moe", "moe", False)}


def pattern_plan(raw: dict, mixer_names: list[str], ffn_names: list[str],
                 problems: list[str]) -> tuple[list[str], list[str]]:
    """``model.layer_pattern`` -> (layers, ffn_layers); bad symbols and names become problems."""
    pattern = raw["layer_pattern"]
    if not isinstance(pattern, str) or not pattern:
        problems.append(f"model.layer_pattern: expected a non-empty string of {', '.join(SYMBOLS)}, "
                        f"got {describe(pattern)}")
        return [], []
    names = {}
    for symbol, (key, default, is_mixer) in SYMBOLS.items():
        name, choices = raw.get(key, default), mixer_names if is_mixer else ffn_names
        if symbol in pattern and name not in choices:
            problems.append(f"model.{key}: {unknown('mixer' if is_mixer else 'ffn', name, choices)}")
        names[symbol] = name
    valid = ", ".join(f"'{s}' ({names[s]})" for s in SYMBOLS)
    layers, ffn_layers = [], []
    for i, symbol in enumerate(pattern):
        if symbol not in SYMBOLS:
            problems.append(f"model.layer_pattern[{i}]: unknown symbol {symbol!r} (valid: {valid})")
            continue
        is_mixer = SYMBOLS[symbol][2]
        layers.append(names[symbol] if is_mixer else NONE)
        ffn_layers.append(NONE if is_mixer else names[symbol])
    return layers, ffn_layers


def check_pattern_keys(raw: dict[str, Any], problems: list[str]) -> None:
    """A pattern replaces the other plans: report the keys it conflicts with."""
    for key in ("layers", "ffn_layers", "attn_layer_period", "expert_layer_period"):
        if key in raw:
            problems.append(f"model.{key}: give either 'layer_pattern' or '{key}', not both")
