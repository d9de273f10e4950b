"""The ``train:`` section: stages (LLaVA's two-stage recipe) and the optimisation settings.

```yaml
train:
  output_dir: runs/digits
  seed: 0
  stages:
    - name: align                  # stage 1: projector alignment
      data: data/train.jsonl       # LLaVA JSON / JSONL; paths relative to data_root (default: its folder)
      trainable: [connector]
      lr: 1.0e-3
      steps: 200
    - name: finetune               # stage 2: connector + LM (+ encoder)
      data: data/train.jsonl
      trainable: [connector, lm]
      lr: {connector: 1.0e-3, lm: 3.0e-4}
      steps: 800
```
Relative paths are resolved against the config file's folder. Under torchrun, ``parallel: ddp``
(the default) replicates the model on every process and ``parallel: fsdp`` shards it (train/fsdp.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hybrid_mllm.core.errors import ConfigError
from hybrid_mllm.core.schema import check_options, describe
from hybrid_mllm.core.suggest import did_you_mean

PARTS = ("encoder", "connector", "lm")


@dataclass(kw_only=True)
class StageConfig:
    name: str
    data: str
    trainable: list[str]
    lr: float | dict[str, float]
    steps: int
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    data_root: str | None = None


@dataclass(kw_only=True)
class TrainConfig:
    stages: list[StageConfig]
    output_dir: str = "runs/train"
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    activation_checkpointing: bool = False
    moe_aux_weight: float = 0.01
    save_every: int = 0
    keep_last: int = 2
    log_every: int = 10
    max_len: int | None = None
    on_too_long: Literal["skip", "fail"] = "skip"
    on_nonfinite: Literal["skip", "stop"] = "stop"
    deterministic: bool = False  # bit-identical GPU runs (see train/determinism.py); slower
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP, train/fsdp.py)
    base_dir: str = field(default=".", repr=False)

    def stage(self, index: int) -> StageConfig:
        return self.stages[index]

    def path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p


def parse_train(raw: Any, *, source: str, base_dir: str | Path) -> TrainConfig:
    """Validate the ``train:`` mapping; all problems at once, with their YAML paths."""
    if raw is None:
        raise ConfigError(source, ["train: missing section: a training config needs 'train: {stages: [...]}'"])
    problems: list[str] = []
    stages_raw = raw.get("stages") if isinstance(raw, dict) else None
    if not isinstance(stages_raw, list) or not stages_raw:
        problems.append(f"train.stages: expected a non-empty list of stages, got {describe(stages_raw)}")
        stages_raw = []
    stages = [_stage(s, f"train.stages[{i}]", problems) for i, s in enumerate(stages_raw)]
    options, found = check_options(TrainConfig, {k: v for k, v in (raw or {}).items() if k != "stages"} | {"stages": []},
                                   "train", hidden=("base_dir",))
    problems += [p for p in found if not p.startswith("train.base_dir")]
    problems += _checks(options, stages)
    if problems:
        raise ConfigError(source, problems)
    options.update(stages=stages, base_dir=str(base_dir))
    return TrainConfig(**options)


def _stage(raw: Any, path: str, problems: list[str]) -> StageConfig | None:
    options, found = check_options(StageConfig, raw, path)
    problems.extend(found)
    if found:
        return None
    for i, part in enumerate(options["trainable"]):
        if part not in PARTS:
            problems.append(f"{path}.trainable[{i}]: unknown part '{part}'.{did_you_mean(part, PARTS)} "
                            f"(allowed: {', '.join(PARTS)})")
    lr = options["lr"]
    if isinstance(lr, dict):
        for part in lr:
            if part not in options["trainable"]:
                problems.append(f"{path}.lr.{part}: not a trainable part of this stage ({', '.join(options['trainable'])})")
        for part in options["trainable"]:
            if part in PARTS and part not in lr:
                problems.append(f"{path}.lr: no learning rate for '{part}' (give one per trainable part, or a single number)")
    for key in ("steps", "batch_size", "grad_accum"):
        if options[key] < 1:
            problems.append(f"{path}.{key}: must be >= 1, got {options[key]}")
    return StageConfig(**options)


def _checks(options: dict, stages: list) -> list[str]:
    problems = []
    if options.get("keep_last", 1) < 1:
        problems.append(f"train.keep_last: must be >= 1, got {options['keep_last']}")
    if options.get("grad_clip", 0) < 0:
        problems.append("train.grad_clip: must be >= 0 (0 = no clipping)")
    names = [s.name for s in stages if s is not None]
    if len(set(names)) != len(names):
        problems.append(f"train.stages: stage names must be unique, got {names}")
    return problems


def apply_overrides(raw: dict, overrides: list[str], *, source: str) -> dict:
    """``key.sub=value`` (list items by index: ``train.stages.1.steps=50``); values parsed as YAML."""
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override '{item}': expected key=value, e.g. train.seed=1")
            continue
        try:
            _set(raw, key.split("."), yaml.safe_load(value))
        except (KeyError, IndexError, TypeError, yaml.YAMLError) as e:
            problems.append(f"override '{item}': {e}")
    if problems:
        raise ConfigError(source, problems)
    return raw


def _set(node: Any, keys: list[str], value: Any) -> None:
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not re.fullmatch(r"-?[0-9]+", key):  # not str.isdigit: '²' and '--1' pass it, then int() fails
                raise TypeError(f"{'.'.join(keys[:i])} is a list: give an item number, not '{key}'")
            index = int(key)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise TypeError(f"'{'.'.join(keys[:i])}' is not a mapping or list")
