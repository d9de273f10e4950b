"""Answer scoring and hybrid-eval end to end."""

import json

import pytest
from _train_fixtures import write_config

from hybrid_mllm.train.cli_eval import main as eval_main
from hybrid_mllm.train.cli_train import load_train_config, run_training
from hybrid_mllm.train.metrics import anls, exact_match, normalize_answer


def test_normalisation_and_exact_match():
    assert normalize_answer("The  Answer!") == "answer"
    assert exact_match("a 7.", ["7"]) == 1.0 and exact_match("17", ["7"]) == 0.0


@pytest.mark.parametrize(("pred", "gold", "score"), [
    ("3914", "3914", 1.0),
    ("3915", "3914", 0.75),   # one edit in four characters
    ("39", "3914", 0.5),      # NL = 0.5 is not below the 0.5 threshold
    ("3", "3914", 0.0),
    ("", "", 1.0),
])
def test_anls(pred, gold, score):
    assert anls(pred, [gold]) == pytest.approx(score if score != 0.5 else 0.0)


def test_hybrid_eval_writes_per_sample_results_and_summary(tmp_path, capsys):
    config, train = load_train_config(str(write_config(tmp_path, steps=(1, 1))), [])
    final = run_training(config, train)
    assert eval_main([str(final), str(tmp_path / "data.jsonl"), "--max-tiles", "4", "--out", str(tmp_path / "ev"),
                      "--limit", "4", "--max-new-tokens", "3"]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["overall"]["n"] == 4
    rows = [json.loads(x) for x in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert {"prediction", "answer", "exact_match", "anls", "visual_tokens"} <= set(rows[0])
    assert "4 questions: exact match" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--prefill-chunk", "--max-visual-tokens", "--max-tiles", "--batch-size"])
def test_hybrid_eval_refuses_a_zero_size_in_one_line(tmp_path, capsys, flag):
    from hybrid_mllm.core.cli import run_cli

    assert run_cli(eval_main, [str(tmp_path / "ckpt"), str(tmp_path / "d.jsonl"), flag, "0"]) == 2
    assert capsys.readouterr().err == f"error: HybridError: {flag} must be >= 1, got 0\n"
