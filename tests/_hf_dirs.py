"""Helpers for converter tests: edited copies of Hugging Face directories, refused conversions."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from hybrid_mllm.convert import ConversionError


def edited(src, tmp_path, *, config=None, tensors=None):
    """A copy of the HF directory `src` with config.json and/or the weights edited in place
    by the given callables (dict -> None)."""
    dst = tmp_path / "edited"
    shutil.copytree(src, dst)
    if config is not None:
        hf = json.loads((dst / "config.json").read_text())
        config(hf)
        (dst / "config.json").write_text(json.dumps(hf))
    if tensors is not None:
        weights = load_file(dst / "model.safetensors")
        tensors(weights)
        save_file(weights, dst / "model.safetensors")
    return dst


def conversion_fails(convert, src, tmp_path, *messages) -> str:
    """convert(src, tmp_path / "out") raises a ConversionError containing every message and
    leaves nothing behind: no output directory, no hidden temporary one. Returns the message."""
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        convert(src, out)
    for message in messages:
        assert message in str(info.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    return str(info.value)
