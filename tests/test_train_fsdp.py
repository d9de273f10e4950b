"""FSDP (train.parallel: fsdp): 2 gloo processes match 1 process at equal global batch, the
checkpoint is a plain full one, resume continues exactly; config and single-process behaviour."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from _train_fixtures import losses, write_config

from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.errors import ConfigError, HybridError
from hybrid_mllm.train.cli_train import load_train_config, run_training
from hybrid_mllm.train.config import parse_train
from hybrid_mllm.train.fsdp import SINGLE_PROCESS_NOTE

# 2 processes reduce-scatter gradients summed in another order than 1 process sums them, so
# losses agree to float32 rounding (measured: ~1e-7), not bit for bit
TOLERANCE = 1e-5
# grad_accum 2 exercises no_sync; grad_clip 0.05 is below every step's gradient norm, so the
# clipping over sharded gradients decides every update
SETTINGS = ["train.stages.1.grad_accum=2", "train.grad_clip=0.05"]


def _torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(__file__)}
    # --standalone: a free port, so parallel test runs do not collide
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "hybrid_mllm.train.cli_train", *args, "--device", "cpu"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_fsdp_two_processes_match_one_and_resume(tmp_path, capsys):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = write_config(tmp_path / "one", steps=(1, 4), batch_size=4, parallel="fsdp")
    two = write_config(tmp_path / "two", steps=(1, 4), batch_size=2, save_every=2, parallel="fsdp")

    # one process, same global batch (4 = 2 ranks x 2): fsdp runs unsharded, with a note
    config, train = load_train_config(str(one), SETTINGS)
    run_training(config, train)
    assert SINGLE_PROCESS_NOTE in capsys.readouterr().err
    _torchrun(str(two), *SETTINGS)
    run_one, run_two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    a, b = losses(run_one, "finetune"), losses(run_two, "finetune")
    assert len(a) == len(b) == 4
    assert max(abs(x - y) for x, y in zip(a, b)) < TOLERANCE, (a, b)

    # the checkpoint is a full, unsharded one under the names of a single-process run
    ref = load_checkpoint(run_one / "stage-finetune" / "final").model.state_dict()
    got = load_checkpoint(run_two / "stage-finetune" / "final").model.state_dict()
    assert got.keys() == ref.keys()
    assert _max_diff(got, ref) < 1e-4, _max_diff(got, ref)
    state = json.loads((run_two / "stage-finetune" / "final" / "training_state.json").read_text())
    assert state["progress"]["world_size"] == 2

    # kill the run after step 2 and resume it, sharded: the same losses and final weights
    rows = [json.loads(x) for x in (run_two / "metrics.jsonl").read_text().splitlines()]
    (run_two / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows
                                                   if r["stage"] == "align" or r["step"] <= 2))
    shutil.move(run_two / "stage-finetune" / "final", tmp_path / "uninterrupted")
    _torchrun(str(two), *SETTINGS, "--resume", str(run_two / "stage-finetune" / "step-000002"))
    assert losses(run_two, "finetune") == b
    resumed = load_checkpoint(run_two / "stage-finetune" / "final").model.state_dict()
    uninterrupted = load_checkpoint(tmp_path / "uninterrupted").model.state_dict()
    assert _max_diff(resumed, uninterrupted) == 0.0


def test_parallel_option_is_validated():
    stage = {"name": "a", "data": "d.jsonl", "trainable": ["lm"], "lr": 1e-3, "steps": 1}
    assert parse_train({"stages": [stage]}, source="c", base_dir=".").parallel == "ddp"
    with pytest.raises(ConfigError, match=r"train.parallel: .*'ddp', 'fsdp'"):
        parse_train({"parallel": "fdsp", "stages": [stage]}, source="c", base_dir=".")


def test_fsdp_without_a_process_group_is_refused(tmp_path):
    from hybrid_mllm.train.distributed import DistInfo

    config, train = load_train_config(str(write_config(tmp_path, steps=(1, 1), parallel="fsdp")), [])
    with pytest.raises(HybridError, match="train.parallel: fsdp needs torch.distributed initialised: launch with torchrun"):
        run_training(config, train, only=0, dist=DistInfo(rank=0, world_size=2))


def test_each_lm_block_and_each_encoder_block_is_a_unit(tmp_path):
    """timm ViT blocks live in `encoder.vit.blocks` (an nn.Sequential): each is sharded on its own."""
    pytest.importorskip("timm")
    from hybrid_mllm.core.build import build_mllm
    from hybrid_mllm.train.fsdp import units

    encoder = ('vision.encoder={"name": "timm", "model_name": "vit_tiny_patch16_224", "image_size": 32, '
               '"model_args": {"depth": 3, "embed_dim": 16, "num_heads": 2}}')
    config, _ = load_train_config(str(write_config(tmp_path)), [encoder])
    model = build_mllm(config, seed=0)[0]
    assert units(model) == [*model.encoder.vit.blocks, *model.lm.blocks]
    assert len(model.encoder.vit.blocks) == 2  # cut at the penultimate block


def test_sharded_model_is_freed_with_its_root(tmp_path):
    """The model -> root link must not keep the model alive (a global table did, forever)."""
    import gc
    import weakref

    import torch.distributed as dist

    from hybrid_mllm.core.build import build_mllm
    from hybrid_mllm.core.config import load_config
    from hybrid_mllm.core.presets import resolve_config_path
    from hybrid_mllm.train import fsdp
    from hybrid_mllm.train.loop import LossStep

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_mllm(load_config(resolve_config_path("hybrid-tiny")), seed=0)[0]
        root = fsdp.shard(model, LossStep, bf16=False)
        assert fsdp.is_sharded(model) and fsdp.shard(model, LossStep, bf16=False) is root  # sharded once
        assert not any(name.startswith("_fsdp_root") for name in model.state_dict())
        alive = weakref.ref(model)
        del model, root
        gc.collect()
        assert alive() is None
    finally:
        dist.destroy_process_group()
