"""YAML -> a validated, resolved `Config`; every problem reported at once.

```yaml
model:
  vocab_size: 263
  d_model: 128
  n_layer: 8
  attn_layer_period: 8        # Jamba's plan: attention where i % period == offset, else mamba
  attn_layer_offset: 4        # ... or an explicit list: layers: [mamba, attention, ...]
  expert_layer_period: 2      # MoE where i % period == offset, else the MLP
  expert_layer_offset: 1      # ... or ffn_layers: [mlp, moe, none, ...] (default: all mlp)
  mixers:                     # options per mixer, checked against its constructor
    mamba: {d_state: 16, expand: 2}
    attention: {n_head: 4, n_kv_head: 2}
  mlp: {d_hidden: 512}         # options per FFN kind (register_ffns), checked against its constructor
  moe: {n_experts: 4, top_k: 2}
  embedding_multiplier: 1.0   # token embeddings times this (Gemma: sqrt(d_model); Granite's option)
  residual_multiplier: 1.0    # each block adds this times its mixer's / FFN's output (Granite)
  logits_multiplier: 1.0      # the logits times this (Granite: 1 / logits_scaling; Falcon-H1: lm_head_multiplier)
```
Nemotron-H's one-symbol-per-layer plan, ``layer_pattern: "M-M*-"``, is `config_pattern`'s; a
layer without mixer says ``none`` in ``layers`` (an FFN-only layer).
The resolved config (explicit per-layer lists, every default filled in) saves back to
YAML with `save_config` and rebuilds the same model.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import write_atomic
from .config_pattern import NONE, PATTERN_KEYS, check_pattern_keys, pattern_plan
from .config_text import TextConfig, parse_text
from .config_vision import VisionConfig, parse_vision
from .errors import ConfigError
from .registry import Registry, get_registry
from .schema import check_options, component_options, describe, is_int, options_of
from .suggest import did_you_mean, unknown
from .yaml_io import read_yaml

NO_FFN = NONE  # a block without FFN (pure Mamba)
NO_MIXER = NONE  # a block without mixer (Nemotron-H's MLP layers)
TOP_LEVEL_KEYS = ("name", "model", "vision", "text", "train")
PLAN_KEYS = ("attn_layer_period", "attn_layer_offset", "expert_layer_period", "expert_layer_offset",
             "attn_mixer", "ssm_mixer", *PATTERN_KEYS)
MAX_LAYERS = 10_000


@dataclass(kw_only=True)
class ModelConfig:
    """The language model, resolved: one mixer name and one FFN kind per layer."""

    vocab_size: int
    d_model: int
    n_layer: int
    layers: list[str]
    ffn_layers: list[str]
    mixers: dict[str, dict[str, Any]] = field(default_factory=dict)
    ffns: dict[str, dict[str, Any]] = field(default_factory=dict)  # per FFN kind; YAML: model.<kind>
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    embedding_multiplier: float = 1.0  # token embeddings are multiplied by this (e.g. sqrt(d_model))
    residual_multiplier: float = 1.0  # a block adds this times its mixer's and FFN's outputs
    logits_multiplier: float = 1.0  # the LM head's logits are multiplied by this

    def to_dict(self) -> dict[str, Any]:
        """As YAML writes it: each FFN kind's options under its own key."""
        out = {}
        for key, value in dataclasses.asdict(self).items():
            out.update(value if key == "ffns" else {key: value})
        return out


STRUCTURE = ("layers", "ffn_layers", "mixers", "ffns")  # resolved from the plan, not read as they are


@dataclass
class Config:
    model: ModelConfig
    name: str = "hybrid"
    vision: VisionConfig | None = None  # None: a text-only model
    text: TextConfig = field(default_factory=TextConfig)
    train: dict[str, Any] | None = None  # validated by hybrid_mllm.train (core does not read it)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "model": self.model.to_dict(), "text": dataclasses.asdict(self.text)}
        if self.vision is not None:
            out["vision"] = dataclasses.asdict(self.vision)
        if self.train is not None:
            out["train"] = self.train
        return out


def load_config(path: str | os.PathLike, registry: Registry | None = None) -> Config:
    """Read and validate a YAML file; raise `ConfigError` listing every problem."""
    return parse_config(read_yaml(path), source=str(path), registry=registry)


def parse_config(raw: Any, *, source: str = "<config>", registry: Registry | None = None) -> Config:
    """Validate an already-parsed YAML document."""
    registry = registry or get_registry()
    if raw is None:
        raise ConfigError(source, ["the file is empty: it needs a 'model:' section"])
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"expected a mapping with a 'model:' section, got {describe(raw)}"])
    problems = [f"{key}: unknown section.{did_you_mean(key, TOP_LEVEL_KEYS)} (allowed: {', '.join(TOP_LEVEL_KEYS)})"
                for key in raw if key not in TOP_LEVEL_KEYS]
    name = raw.get("name", "hybrid")
    if not isinstance(name, str):
        problems.append(f"name: expected str, got {describe(name)}")
    model = raw.get("model")
    if not isinstance(model, dict):
        problems.append("model: missing section" if model is None else f"model: expected a mapping, got {describe(model)}")
        raise ConfigError(source, problems)
    model_config = _parse_model(model, registry, problems)
    d_model = model.get("d_model") if is_int(model.get("d_model")) else None
    vision = parse_vision(raw.get("vision"), registry, d_model, problems)
    text = parse_text(raw.get("text"), problems)
    train = raw.get("train")
    if train is not None and not isinstance(train, dict):
        problems.append(f"train: expected a mapping, got {describe(train)}")
    if problems:
        raise ConfigError(source, problems)
    return Config(model=model_config, name=name, vision=vision, text=text, train=train)


def _parse_model(raw: dict, registry: Registry, problems: list[str]) -> ModelConfig | None:
    pattern = raw.get("layer_pattern")
    if isinstance(pattern, str) and "n_layer" not in raw:  # the pattern says how many layers
        raw = {**raw, "n_layer": len(pattern)}
    scalars = _scalars(raw, registry, problems)
    if "n_layer" not in scalars:
        return None
    n_layer, d_model = scalars["n_layer"], scalars.get("d_model")
    if "layer_pattern" in raw:
        check_pattern_keys(raw, problems)
        layers, ffn_layers = pattern_plan(raw, registry.names("mixer"), registry.names("ffn"), problems)
        if isinstance(pattern, str) and len(pattern) != n_layer:
            problems.append(f"model.layer_pattern: has {len(pattern)} symbols but n_layer is {n_layer}")
    else:
        layers = _layer_plan(raw, n_layer, [*registry.names("mixer"), NO_MIXER], problems)
        ffn_layers = _ffn_plan(raw, n_layer, [*registry.names("ffn"), NO_FFN], problems)
        for i, pair in enumerate(zip(layers, ffn_layers, strict=False)):
            if pair == (NO_MIXER, NO_FFN):
                problems.append(f"model.layers[{i}]: a layer needs a mixer or an FFN, not none and none")
    mixers = _used_options(registry, "mixer", raw.get("mixers"), layers, "model.mixers.", d_model, problems)
    ffns = _used_options(registry, "ffn", {k: raw[k] for k in registry.names("ffn") if k in raw}, ffn_layers,
                         "model.", d_model, problems)
    if problems:
        return None
    return ModelConfig(layers=layers, ffn_layers=ffn_layers, mixers=mixers, ffns=ffns, **scalars)


def _scalars(raw: dict, registry: Registry, problems: list[str]) -> dict[str, Any]:
    """The model's plain fields, checked against `ModelConfig` (ints >= 1); `STRUCTURE`, the
    plan keys and the FFN kinds' options are checked by the callers."""
    given = {k: v for k, v in raw.items() if k not in STRUCTURE}
    placeholders = {"layers": [], "ffn_layers": []}
    options, found = check_options(ModelConfig, {**given, **placeholders}, "model", hidden=("ffns",),
                                   also=(*registry.names("ffn"), *PLAN_KEYS), noun="key")
    problems.extend(found)
    hints = options_of(ModelConfig)
    out = {}
    for key, value in options.items():
        if key in STRUCTURE:
            continue
        if hints[key].annotation is int and value < 1:
            problems.append(f"model.{key}: must be >= 1, got {value}")
        elif key == "n_layer" and value > MAX_LAYERS:  # a typo; a list this long would exhaust memory
            problems.append(f"model.n_layer: must be <= {MAX_LAYERS:,}, got {value:,}")
        else:
            out[key] = value
    return out


def _period_plan(raw: dict, prefix: str, n_layer: int, hit: str, miss: str, problems: list[str]) -> list[str]:
    """Jamba's ``<prefix>_layer_period/offset``: layer i gets `hit` where i % period == offset."""
    period, offset = raw.get(f"{prefix}_layer_period"), raw.get(f"{prefix}_layer_offset", 0)
    ok = True
    if not is_int(period) or period < 1:
        problems.append(f"model.{prefix}_layer_period: expected an int >= 1, got {describe(period)}")
        ok = False
    elif not is_int(offset) or not 0 <= offset < period:
        problems.append(f"model.{prefix}_layer_offset: expected an int in [0, {period - 1}], got {describe(offset)}")
        ok = False
    return [hit if i % period == offset else miss for i in range(n_layer)] if ok else []


def _layer_plan(raw: dict, n_layer: int, mixer_names: list[str], problems: list[str]) -> list[str]:
    if "layers" in raw and "attn_layer_period" in raw:
        problems.append("model.layers: give either 'layers' or 'attn_layer_period', not both")
        return []
    if "attn_layer_period" in raw:
        attn, ssm = raw.get("attn_mixer", "attention"), raw.get("ssm_mixer", "mamba")
        for key, name in (("attn_mixer", attn), ("ssm_mixer", ssm)):
            if name not in mixer_names:
                problems.append(f"model.{key}: {unknown('mixer', name, mixer_names)}")
        return _period_plan(raw, "attn", n_layer, attn, ssm, problems)
    layers = raw.get("layers")
    if layers is None:
        problems.append("model.layers: missing: give a list of mixer names, one per layer, "
                        "or attn_layer_period/attn_layer_offset")
        return []
    return _name_list(layers, "model.layers", "mixer", mixer_names, n_layer, problems)


def _ffn_plan(raw: dict, n_layer: int, choices: list[str], problems: list[str]) -> list[str]:
    if "ffn_layers" in raw and "expert_layer_period" in raw:
        problems.append("model.ffn_layers: give either 'ffn_layers' or 'expert_layer_period', not both")
        return []
    if "expert_layer_period" in raw:
        return _period_plan(raw, "expert", n_layer, "moe", "mlp", problems)
    ffn_layers = raw.get("ffn_layers", "mlp")
    if isinstance(ffn_layers, str):
        ffn_layers = [ffn_layers] * n_layer
    return _name_list(ffn_layers, "model.ffn_layers", "ffn", choices, n_layer, problems)


def _name_list(names: Any, path: str, kind: str, choices: list[str], n_layer: int, problems: list[str]) -> list[str]:
    if not isinstance(names, list):
        problems.append(f"{path}: expected a list of {kind} names, got {describe(names)}")
        return []
    if len(names) != n_layer:
        problems.append(f"{path}: has {len(names)} entries but n_layer is {n_layer}")
    for i, name in enumerate(names):
        if name not in choices:
            problems.append(f"{path}[{i}]: {unknown(kind, name, choices)}")
    return list(names)


def _used_options(registry: Registry, kind: str, raw: Any, plan: list[str], prefix: str, d_model: int | None,
                  problems: list[str]) -> dict[str, dict[str, Any]]:
    """Options of every component of `kind` the plan uses or the YAML configures (``raw``:
    name -> options), each checked against its constructor ``cls(d_model, **options)``,
    built on the meta device when used so that cross-option checks are reported too."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.')}: expected a mapping of {kind} name -> options, got {describe(raw)}")
        return {}
    names = registry.names(kind)
    for name in raw:
        if name not in names:
            problems.append(f"{prefix}{name}: {unknown(kind, name, names)}")
    in_plan = dict.fromkeys(n for n in plan if isinstance(n, str))  # a bad entry was already reported
    used = [n for n in in_plan if n in names] + [n for n in raw if n in names and n not in in_plan]
    args = None if d_model is None else (d_model,)
    return {name: component_options(registry.get(kind, name), raw.get(name), f"{prefix}{name}", problems,
                                    build_args=args if name in in_plan else None)
            for name in used}


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    write_atomic(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None))
