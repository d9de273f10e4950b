"""Checkpoints: safetensors + YAML, atomic, sharded, clear errors, no pickle."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hybrid_mllm.core.atomic import remove_partial
from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.presets import resolve_config_path


@pytest.fixture(scope="module")
def tiny():
    config = load_config(resolve_config_path("hybrid-tiny"))
    return build_model(config, seed=0).eval(), config


def _same_logits(a, b):
    ids = torch.randint(0, 259, (1, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=0, atol=0)


def test_round_trip(tmp_path, tiny):
    model, config = tiny
    save_checkpoint(model, config, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.yaml", "model.safetensors"]
    assert "lm.lm_head.weight" not in load_file(tmp_path / "ckpt" / "model.safetensors")  # tied: stored once
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.model == config.model
    _same_logits(model, loaded.model.lm.eval())


def test_sharded_round_trip(tmp_path, tiny):
    model, config = tiny
    save_checkpoint(model, config, tmp_path / "ckpt", max_shard_bytes=1_000_000)
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _same_logits(model, load_checkpoint(tmp_path / "ckpt").model.lm.eval())


def test_existing_directory_is_refused_then_replaced_atomically(tmp_path, tiny):
    model, config = tiny
    save_checkpoint(model, config, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(model, config, tmp_path / "ckpt")
    save_checkpoint(model, config, tmp_path / "ckpt", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary or old directory left


def test_failure_leaves_nothing_behind(tmp_path, tiny):
    model, config = tiny

    def boom(directory):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(model, config, tmp_path / "ckpt", write_extra=boom)
    assert list(tmp_path.iterdir()) == []



def test_kill_between_renames_restores_the_old_checkpoint(tmp_path, tiny):
    """SIGKILL after `final` was moved aside and before the new one was renamed into place."""
    model, config = tiny
    save_checkpoint(model, config, tmp_path / ".final.old-123")  # the previous, complete checkpoint
    save_checkpoint(model, config, tmp_path / ".final.tmp-abc")  # the new one, never renamed
    (tmp_path / ".step-000004.tmp-def").mkdir()  # an unrelated half-written one
    removed = remove_partial(tmp_path)
    assert sorted(p.name for p in removed) == [".final.tmp-abc", ".step-000004.tmp-def"]
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
    _same_logits(model, load_checkpoint(tmp_path / "final").model.lm.eval())


def test_old_copy_is_removed_when_the_target_exists(tmp_path, tiny):
    model, config = tiny
    save_checkpoint(model, config, tmp_path / "final")
    (tmp_path / ".final.old-123").mkdir()
    assert [p.name for p in remove_partial(tmp_path)] == [".final.old-123"]
    assert [p.name for p in tmp_path.iterdir()] == ["final"]

def test_missing_unexpected_and_mismatched_tensors_are_listed(tmp_path, tiny):
    model, config = tiny
    save_checkpoint(model, config, tmp_path / "ckpt")
    weights = load_file(tmp_path / "ckpt" / "model.safetensors")
    del weights["lm.norm.weight"]
    weights["extra.bias"] = torch.zeros(3)
    weights["lm.embed.weight"] = torch.zeros(3, 3)
    save_file(weights, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "ckpt")
    message = str(info.value)
    assert "missing: lm.norm.weight [1 in all]" in message
    assert "unexpected: extra.bias [1 in all]" in message
    assert "shape mismatch: lm.embed.weight (3, 3) != (263, 128)" in message



@pytest.mark.parametrize(("shard", "message"), [
    ("../outside.safetensors", r"index.json: path '\.\./outside.safetensors' leaves the checkpoint directory"),
    ("/etc/passwd", r"index.json: absolute path '/etc/passwd': paths must be relative to the checkpoint directory"),
])
def test_index_cannot_point_outside_the_checkpoint(tmp_path, tiny, shard, message):
    model, config = tiny
    save_checkpoint(model, config, tmp_path / "ckpt", max_shard_bytes=1_000_000)
    save_file({"x": torch.zeros(1)}, tmp_path / "outside.safetensors")
    index_file = tmp_path / "ckpt" / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["lm.embed.weight"] = shard
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "ckpt")

def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.yaml: not a hybrid-mllm checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nope")


def test_multimodal_checkpoint_with_tokenizer(tmp_path):
    from hybrid_mllm.core.build import build_mllm

    config = load_config(resolve_config_path("mllm-tiny"))
    model, tokenizer = build_mllm(config, seed=0)
    save_checkpoint(model, config, tmp_path / "ckpt", tokenizer=tokenizer)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.tokenizer.encode("a<image>") == tokenizer.encode("a<image>")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
