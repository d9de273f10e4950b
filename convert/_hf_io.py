"""Hugging Face model directories on disk: read ``config.json`` and safetensors lazily, write atomically.

```
HF/config.json                                  architectures, model_type, sizes
HF/model.safetensors                            weights, or shards:
HF/model-00001-of-00002.safetensors ...         + model.safetensors.index.json (weight_map)
```
The shard layout is the one our checkpoints use too, so file discovery and sharded
writing come from `hybrid_mllm.core.checkpoint`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from hybrid_mllm.core.atomic import write_directory
from hybrid_mllm.core.checkpoint import MAX_SHARD_BYTES, save_weights, weight_files
from hybrid_mllm.core.errors import HybridError

HF_CONFIG_FILE = "config.json"
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class ConversionError(HybridError):
    """A model directory that cannot be converted; the message has one line per problem."""

    def __init__(self, head: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__("\n".join([head] + [f"  {p}" for p in self.problems]))


def read_hf_config(directory: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face model directory."""
    path = directory / HF_CONFIG_FILE
    if not directory.is_dir():
        raise ConversionError(f"{directory} is not a directory: give a Hugging Face model directory")
    if not path.exists():
        raise ConversionError(f"{directory} has no {HF_CONFIG_FILE}: not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


@dataclass(frozen=True)
class _Entry:
    path: Path
    key: str  # the tensor's name in the file
    shape: tuple[int, ...]  # of the tensor, or of the sub-tensor `index` selects
    dtype: str  # safetensors' name: F32, BF16 ...
    index: tuple = ()  # a sub-tensor (one expert of a packed tensor), () for the whole tensor


class HFWeights:
    """The tensors of a model directory by name, read lazily: names, shapes and dtypes come
    from the file headers; `read` loads one tensor (or one slice of a packed tensor).

    Files are memory-mapped by safetensors, one at a time: reading in `path` order maps
    each shard once, and its pages leave the process when the next one is opened.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self._handle_path: Path | None = None
        self._handle: Any = None
        if not any(directory.glob("*.safetensors")) and any(directory.glob("*.bin")):
            raise ConversionError(f"{directory} has only PyTorch pickle weights (*.bin), which we never load: "
                                  "re-save them as safetensors (save_pretrained(..., safe_serialization=True))")
        try:
            files = weight_files(directory)  # checks that every shard of the index exists
            self._entries = dict(self._headers(files))
        except HybridError as e:
            raise ConversionError(str(e)) from None
        except SafetensorError as e:
            raise ConversionError(f"cannot read the safetensors files of {directory}: {e} "
                                  "(a truncated download, or an index that does not match its shards?)") from None

    @staticmethod
    def _headers(files: dict[str, Path]):
        """(name, entry) for every tensor, each file opened once."""
        by_path: dict[Path, list[str]] = {}
        for name, path in files.items():
            by_path.setdefault(path, []).append(name)
        for path, names in sorted(by_path.items()):
            with safe_open(str(path), framework="pt") as f:
                for name in names:
                    s = f.get_slice(name)
                    yield name, _Entry(path, name, tuple(s.get_shape()), s.get_dtype())

    def names(self) -> set[str]:
        return set(self._entries)

    def path(self, name: str) -> Path:
        return self._entries[name].path

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def stored_dtype(self, name: str | None = None) -> torch.dtype:
        """The dtype `name` (default: the first tensor by name) is stored in."""
        entry = self._entries[name or min(self._entries)]
        if entry.dtype not in SAFETENSORS_DTYPES:
            raise ConversionError(f"{entry.key} in {self.directory} is stored as {entry.dtype}, which we do not "
                                  "load as such: choose a dtype (--dtype bfloat16)")
        return SAFETENSORS_DTYPES[entry.dtype]

    def read(self, name: str) -> torch.Tensor:
        entry = self._entries[name]
        if self._handle_path != entry.path:
            self._handle = None  # unmap the previous file first
            self._handle, self._handle_path = safe_open(str(entry.path), framework="pt"), entry.path
        if entry.index:
            return self._handle.get_slice(entry.key)[entry.index]
        return self._handle.get_tensor(entry.key)

    def unpack(self, packed: str, parts: dict[str, tuple]) -> None:
        """Replace the packed tensor `packed` by named sub-tensors (name -> index into it,
        integers and slices along its leading dimensions)."""
        entry = self._entries.pop(packed)
        for name, index in parts.items():
            shape = list(entry.shape)
            for dim, i in reversed(list(enumerate(index))):  # integers drop a dimension, slices shorten it
                if isinstance(i, int):
                    del shape[dim]
                else:
                    shape[dim] = len(range(*i.indices(shape[dim])))
            self._entries[name] = _Entry(entry.path, entry.key, tuple(shape), entry.dtype, index)

    def close(self) -> None:
        self._handle = self._handle_path = None

    def __enter__(self) -> HFWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_hf_dir(tensors: dict[str, torch.Tensor], config: dict[str, Any], out_dir: Path, *,
                 overwrite: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write ``config.json`` and the (contiguous, CPU) tensors to `out_dir`, atomically:
    everything goes to a temporary sibling first, so a failure leaves nothing half-written."""
    if out_dir.exists() and not overwrite:
        raise ConversionError(f"{out_dir} already exists: choose another directory or pass --overwrite")

    def fill(tmp: Path) -> None:
        (tmp / HF_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_weights(tensors, tmp, max_shard_bytes)

    return write_directory(out_dir, fill, overwrite=True)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16", the spelling of config.json's ``dtype``."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """"bfloat16" / "bf16" / torch.bfloat16 -> torch.bfloat16; None stays None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if dtype not in SAFETENSORS_DTYPES.values():
        raise ConversionError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
    return dtype

