"""Model checkpoints: a directory with ``config.yaml`` and safetensors weights.

```
CKPT/config.yaml                          the resolved config (rebuilds the model)
CKPT/model.safetensors                    weights, or when large, shards:
CKPT/model-00001-of-00003.safetensors ... + model.safetensors.index.json (HF layout)
CKPT/tokenizer.json ...                   the tokenizer's files, when it has any
```
Weights are named as in `HybridMLLM` (``lm.``, ``encoder.``, ``connector.`` ...).
Written atomically (`atomic.write_directory`): everything goes to a temporary sibling directory, is fsynced, then
renamed into place, so a crash leaves either the old checkpoint or the new one. Loading
never unpickles and reads tensors one at a time from memory-mapped files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .atomic import write_directory
from .build import build_mllm
from .config import Config, load_config, save_config
from .errors import CheckpointError
from .mllm import HybridMLLM
from .model import HybridLM
from .paths import confined
from .text import Tokenizer

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_SHARD_BYTES = 2 * 2**30


class Loaded(NamedTuple):
    model: HybridMLLM
    tokenizer: Tokenizer
    config: Config


def save_checkpoint(model: HybridMLLM | HybridLM, config: Config, out_dir: str | os.PathLike, *,
                    tokenizer: Tokenizer | None = None, overwrite: bool = False,
                    max_shard_bytes: int = MAX_SHARD_BYTES,
                    write_extra: Callable[[Path], None] | None = None,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `model`, `config` (and `tokenizer`'s files) to `out_dir` atomically;
    `write_extra(tmp_dir)` may add files. A bare `HybridLM` is saved as a text-only model.
    `weights`: the state dict to write instead of `model`'s (a sharded model's, gathered)."""

    def fill(tmp: Path) -> None:
        nonlocal config
        if tokenizer is not None:
            tokenizer.save(tmp)
            config = dataclasses.replace(config, text=dataclasses.replace(config.text, tokenizer=tokenizer.describe()))
        save_config(config, tmp / CONFIG_FILE)
        prefix = "lm." if isinstance(model, HybridLM) else ""
        state = {prefix + name: t.detach().contiguous().cpu()
                 for name, t in (weights if weights is not None else unique_state_dict(model)).items()}
        save_weights(state, tmp, max_shard_bytes)
        if write_extra is not None:
            write_extra(tmp)

    return write_directory(Path(out_dir), fill, overwrite=overwrite)


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (a tied LM head is stored once, as the embedding).
    Tied parameters are one Parameter object under two names; compared by identity, which
    also works on the meta device where every data pointer is 0."""
    seen, out = set(), {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor.detach()
    return out


def save_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> None:
    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def weight_files(ckpt_dir: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, from the index or the single file."""
    index = ckpt_dir / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to file names")
        try:  # the index is a user file: its names must not reach outside the checkpoint
            files = {f: confined(ckpt_dir, f, where="the checkpoint directory", error=CheckpointError)
                     for f in set(weight_map.values())}
        except CheckpointError as e:
            raise CheckpointError(f"{index}: {e}") from None
        missing = sorted(f for f, path in files.items() if not path.exists())
        if missing:
            raise CheckpointError(f"{ckpt_dir} is incomplete: missing shard(s) {', '.join(missing[:3])}"
                                  f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}")
        return {name: files[f] for name, f in weight_map.items()}
    single = ckpt_dir / WEIGHTS_FILE
    if not single.exists():
        raise CheckpointError(f"{ckpt_dir} has no {WEIGHTS_FILE} (nor {INDEX_FILE}): not a checkpoint directory")
    with _open_weights(single) as f:
        return dict.fromkeys(f.keys(), single)


def _open_weights(path: Path):
    """A safetensors file opened for reading, or a `CheckpointError` naming it."""
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}): truncated or corrupt? "
                              "Save the checkpoint again") from None


def load_checkpoint(ckpt_dir: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None) -> Loaded:
    """Rebuild the model and tokenizer from ``config.yaml`` and load the weights."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir}: no such checkpoint directory")
    if not (ckpt_dir / CONFIG_FILE).exists():
        raise CheckpointError(f"{ckpt_dir} has no {CONFIG_FILE}: not a hybrid-mllm checkpoint "
                              f"(a Hugging Face model directory? convert it with hybrid-convert)")
    config = load_config(ckpt_dir / CONFIG_FILE)
    model, tokenizer = build_mllm(config, device=device, dtype=dtype, base_dir=ckpt_dir)
    load_weights(model, weight_files(ckpt_dir), source=str(ckpt_dir))
    return Loaded(model, tokenizer, config)


def load_weights(model: nn.Module, files: dict[str, Path], *, source: str,
                 place: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda tensor, like: tensor) -> None:
    """Copy tensors into `model` one at a time (floating-point ones cast to the model's dtype);
    every missing, unexpected, mis-shaped or wrong-kind (integer for float) tensor is reported
    in one error (first few names and a count). `place(tensor, param)` lays a full tensor out
    as its parameter (a sharded trainer passes one that cuts this process's shard)."""
    expected = {name: tuple(t.shape) for name, t in unique_state_dict(model).items()}
    missing = sorted(set(expected) - set(files))
    unexpected = sorted(set(files) - set(expected))
    params = dict(model.state_dict())
    mismatched, wrong_dtype, handles = [], [], {}
    try:
        for name in sorted(set(files) & set(expected)):
            path = files[name]
            if path not in handles:
                handles[path] = _open_weights(path)
            tensor = handles[path].get_tensor(name)
            if tuple(tensor.shape) != expected[name]:
                mismatched.append(f"{name} {tuple(tensor.shape)} != {expected[name]}")
                continue
            if tensor.is_floating_point() != params[name].is_floating_point():  # float dtypes are cast
                wrong_dtype.append(f"{name} {str(tensor.dtype).removeprefix('torch.')} "
                                   f"(expected {str(params[name].dtype).removeprefix('torch.')})")
                continue
            with torch.no_grad():
                params[name].copy_(place(tensor, params[name]))
    finally:
        handles.clear()
    problems = [f"{label}: {_first_few(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched),
                 ("wrong dtype", wrong_dtype)) if names]
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems)
                              + " (weights saved from another config, or changed since?)")


def _first_few(names: list[str], n: int = 5) -> str:
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more + f" [{len(names)} in all]"
