"""Training state beside a model checkpoint: optimizer moments, step, RNG, data position.

``training_state.safetensors`` holds tensors (AdamW moments by parameter name, RNG states);
``training_state.json`` holds the rest. Nothing is pickled.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hybrid_mllm.core.errors import HybridError

from .fsdp import shard_like

TENSORS, META = "training_state.safetensors", "training_state.json"


@dataclass
class Progress:
    """Where a run is: resuming from it reproduces the uninterrupted run."""

    stage: str
    step: int  # optimizer steps done in this stage
    epoch: int  # data epoch of the next batch
    batch: int  # index of the next batch in that epoch (this rank's batches)
    tokens: int  # tokens trained on so far in this stage
    world_size: int = 1


def save_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress, *,
               moments: dict[str, dict] | None = None) -> None:
    """`moments`: the optimizer state by parameter name to write instead of `optimizer`'s
    (a sharded model's, gathered: see `train.fsdp.full_state`)."""
    if moments is None:
        names = {id(p): n for n, p in model.named_parameters()}
        moments = {names[id(param)]: state for param, state in optimizer.state.items()}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for name, state in moments.items():
        for key, value in state.items():
            tensors[f"opt.{name}.{key}"] = value.detach().cpu().contiguous() if torch.is_tensor(value) \
                else torch.tensor(value)
    save_file(tensors, str(directory / TENSORS))
    meta = {"progress": asdict(progress), "python_random": _python_rng()}
    (directory / META).write_text(json.dumps(meta, indent=1))


def load_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
    """Restore optimizer moments and RNG states saved by `save_state`; returns the progress."""
    if not (directory / TENSORS).exists() or not (directory / META).exists():
        raise HybridError(f"{directory} has no training state ({TENSORS}, {META}): it is not a resumable checkpoint")
    tensors = load_file(str(directory / TENSORS))
    meta = json.loads((directory / META).read_text())
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key.startswith("opt."):
            name, _, slot = key[4:].rpartition(".")
            if name not in params:
                raise HybridError(f"{directory}: optimizer state for unknown parameter '{name}': "
                                  f"the model changed since this checkpoint")
            optimizer.state[params[name]][slot] = shard_like(value.to(params[name].device), params[name])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return Progress(**meta["progress"])


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
