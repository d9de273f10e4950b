"""Training: two stages, freezing, loss going down, exact resume, errors, and 2-process DDP."""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from _train_fixtures import losses, write_config

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.train import loop
from hybrid_mllm.train.cli_train import load_train_config, run_training
from hybrid_mllm.train.data import DataError, read_records
from hybrid_mllm.train.loop import LossStep, TrainError


def test_two_stages_train_the_chosen_parts(tmp_path):
    config, train = load_train_config(str(write_config(tmp_path)), [])
    final = run_training(config, train)
    assert final == tmp_path / "run" / "stage-finetune" / "final"
    align = load_checkpoint(tmp_path / "run" / "stage-align" / "final").model
    start = build_mllm(config, seed=0)[0]
    # stage 1 trains the connector only: the LM and the encoder keep their initial weights
    assert torch.equal(align.lm.embed.weight, start.lm.embed.weight)
    assert torch.equal(align.encoder.patchify.weight, start.encoder.patchify.weight)
    assert not torch.equal(align.connector.fc1.weight, start.connector.fc1.weight)
    assert len(losses(tmp_path / "run", "finetune")) == 4


def test_aligning_to_an_untrained_lm_is_warned_about_once(tmp_path, capsys):
    """LLaVA's connector-only stage 1 needs a pretrained LM: from random weights it says so."""
    config, train = load_train_config(str(write_config(tmp_path, steps=(1, 1))), [])
    run_training(config, train)
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warning == [warning[0]] and "stage 'align' trains the connector against an LM that has never been " \
                                      "trained" in warning[0] and "--init" in warning[0]
    init = tmp_path / "run" / "stage-align" / "final"
    run_training(config, train, init=init)
    assert "never been trained" not in capsys.readouterr().err


def test_loss_goes_down_when_overfitting(tmp_path):
    config, train = load_train_config(str(write_config(tmp_path, steps=(1, 30))), [])
    run_training(config, train)
    curve = losses(tmp_path / "run", "finetune")
    assert sum(curve[-5:]) / 5 < 0.65 * sum(curve[:5]) / 5, curve


def test_resume_continues_exactly(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config, train = load_train_config(str(write_config(tmp_path / "a", steps=(1, 6))), [])
    run_training(config, train, only=None)
    config_b, train_b = load_train_config(str(write_config(tmp_path / "b", steps=(1, 6), save_every=3)), [])
    run_training(config_b, train_b)
    run_b = tmp_path / "b" / "run"
    # drop everything after step 3, as if the run had been killed there, and resume
    rows = [json.loads(x) for x in (run_b / "metrics.jsonl").read_text().splitlines()]
    (run_b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows
                                                 if r["stage"] == "align" or r["step"] <= 3))
    shutil.rmtree(run_b / "stage-finetune" / "final")
    run_training(config_b, train_b, only=1, resume=run_b / "stage-finetune" / "step-000003")
    assert losses(run_b, "finetune") == losses(tmp_path / "a" / "run", "finetune")  # bit for bit on the CPU


def test_resume_from_a_config_that_changed_shape(tmp_path):
    path = write_config(tmp_path, steps=(1, 2), save_every=1)
    config, train = load_train_config(str(path), [])
    run_training(config, train)
    bigger, train = load_train_config(str(path), ["model.d_model=48"])
    with pytest.raises(HybridError, match="shape mismatch"):
        run_training(bigger, train, only=1, resume=tmp_path / "run" / "stage-finetune" / "step-000001")


def test_bad_data_lines_are_named(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"conversations": [{"from": "human", "value": "hi"}]}\nnot json\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        read_records(tmp_path / "d.jsonl")
    (tmp_path / "d.jsonl").write_text('{"conversations": [{"from": "human", "value": "hi"}]}\n'
                                      '{"image": "../x.png", "conversations": [{"from": "human", "value": "<image>"},'
                                      ' {"from": "gpt", "value": "a"}]}\n')
    with pytest.raises(DataError) as info:
        read_records(tmp_path / "d.jsonl")
    assert "d.jsonl:1: the conversation has no assistant ('gpt') turn" in str(info.value)
    assert "d.jsonl:2: path '../x.png' leaves the data root" in str(info.value)


def test_unknown_stage_and_bad_override(tmp_path):
    path = str(write_config(tmp_path))
    from hybrid_mllm.train.cli_train import main

    with pytest.raises(HybridError, match="no stage 'sft'"):
        main([path, "--stage", "sft"])
    with pytest.raises(HybridError, match="expected key=value"):
        main([path, "train.seed"])


def test_two_processes_match_one_at_equal_global_batch(tmp_path):
    """torchrun with 2 gloo processes x batch 2 gives the losses of 1 process x batch 4."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = write_config(tmp_path / "one", steps=(1, 3), batch_size=4)
    two = write_config(tmp_path / "two", steps=(1, 3), batch_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(__file__)}
    base = [sys.executable, "-m", "hybrid_mllm.train.cli_train"]
    r = subprocess.run(base + [str(one), "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                        "-m", "hybrid_mllm.train.cli_train", str(two), "--device", "cpu"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(tmp_path / "one" / "run", "finetune"), losses(tmp_path / "two" / "run", "finetune")
    assert len(a) == len(b) == 3
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)


def test_nonfinite_loss_stop_names_the_step_batch_and_records(tmp_path):
    path = write_config(tmp_path, steps=(1, 4), on_nonfinite="stop")
    config, train = load_train_config(str(path), ["train.stages.1.lr.lm=1.0e+30"])  # step 1 blows the weights up
    with pytest.raises(TrainError, match=r"^non-finite loss at stage 'finetune', step 2, batch \d+ of epoch \d+ "
                                         r"\(records \d+, \d+, \d+, \d+\) \(set train.on_nonfinite: skip"):
        run_training(config, train)


def test_nonfinite_loss_skip_drops_the_batch_and_goes_on(tmp_path, monkeypatch, capsys):
    calls = []

    def nan_on_third_call(self, samples):  # align step 1, finetune step 1, then this batch
        calls.append(1)
        ce, aux = original(self, samples)
        return (ce * float("nan"), aux) if len(calls) == 3 else (ce, aux)

    original = LossStep.forward
    monkeypatch.setattr(LossStep, "forward", nan_on_third_call)
    config, train = load_train_config(str(write_config(tmp_path, steps=(1, 4), on_nonfinite="skip")), [])
    run_training(config, train)
    assert re.search(r"warning: non-finite loss at stage 'finetune', step 2, batch \d+ of epoch \d+ \(records "
                     r"\d+, \d+, \d+, \d+\): batch skipped", capsys.readouterr().out)
    curve = losses(tmp_path / "run", "finetune")
    assert len(curve) == 4 and all(math.isfinite(x) for x in curve) and len(calls) == 6


def test_nonfinite_loss_skip_stops_when_the_weights_diverged(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "MAX_NONFINITE_IN_A_ROW", 3)
    path = write_config(tmp_path, steps=(1, 30), on_nonfinite="skip")
    config, train = load_train_config(str(path), ["train.stages.1.lr.lm=1.0e+30"])
    with pytest.raises(TrainError, match="non-finite loss on 3 batches in a row, the last at stage 'finetune', step 2, "
                                         ".*: the weights have diverged"):
        run_training(config, train)


def _text_only(path, n: int = 4) -> None:
    """Append n text-only samples to a data file."""
    with open(path, "a") as f:
        f.writelines(json.dumps({"id": f"t{i}", "conversations": [
            {"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}) + "\n" for i in range(n))


def test_vision_only_stage_on_text_only_data_is_refused(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "data.jsonl").write_text("")
    _text_only(tmp_path / "data.jsonl")
    config, train = load_train_config(str(path), [])
    with pytest.raises(TrainError, match=r"stage 'align' trains only \['connector'\], but its data .* has no "
                                         r"images or videos.*add 'lm'"):
        run_training(config, train, only=0)
    assert not (tmp_path / "run" / "stage-align").exists()


def test_text_only_batches_in_a_vision_only_stage_train_nothing_and_go_on(tmp_path):
    path = write_config(tmp_path, steps=(6, 1), batch_size=2)
    _text_only(tmp_path / "data.jsonl", n=8)  # 8 images + 8 text-only: some batches are text only
    config, train = load_train_config(str(path), [])
    run_training(config, train, only=0)
    assert len(losses(tmp_path / "run", "align")) == 6
    align = load_checkpoint(tmp_path / "run" / "stage-align" / "final").model
    start = build_mllm(config, seed=0)[0]
    assert torch.equal(align.lm.embed.weight, start.lm.embed.weight)
    assert not torch.equal(align.connector.fc1.weight, start.connector.fc1.weight)
