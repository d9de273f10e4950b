"""The digits demo end to end as README command 1 runs it, and its parts: vision pretraining,
the BPE tokenizer, data reuse, the report."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.core.text import get_template, load_tokenizer
from hybrid_mllm.demo.data_digits import make_digits_dataset, written_with
from hybrid_mllm.demo.report import summary
from hybrid_mllm.train.bpe import train_bpe
from hybrid_mllm.train.pretrain_vision import LabelledTiles, pretrain_vision

BIN = Path(sys.executable).parent


def _command(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else name


def test_quick_demo_runs_from_any_folder_with_a_relative_out(tmp_path):
    """README command 1 (in its --quick form) from a fresh working directory: results written
    under the relative --out, and the hybrid-run command it prints answers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([_command("hybrid-demo"), "--quick", "--out", "runs/q"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "runs" / "q"
    for name in ("results.md", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in results] == ["hybrid", "attention"]
    assert len(results[0]["eval"]) == 6 and all(s["seconds_per_answer"] > 0 for s in results[0]["eval"].values())
    for text in ("== data ==", "== hybrid (digits-hybrid): vision pretraining", "== attention: evaluation, video, 128 frames",
                 "hybrid checkpoint: runs/q/hybrid/run/stage-instruct/final"):
        assert text in run.stdout, text
    ask = run.stdout.split("ask the trained model yourself:\n", 1)[1].strip().split("    # the answer is")[0]
    args = shlex.split(ask.replace("$'", "'"))  # bash's $'...\n...' quoting, as a user's shell reads it
    args = [a.replace("\\n", "\n") for a in args]
    asked = subprocess.run([_command(args[0]), *args[1:], "--max-new-tokens", "4"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert asked.returncode == 0, asked.stderr[-2000:]


def test_a_second_run_reuses_the_data_only_when_made_with_the_same_settings(tmp_path):
    sizes = {"train_images": 2, "eval_images": 1, "train_videos": 1, "eval_videos": 1}
    make_digits_dataset(tmp_path / "d", seed=0, progress=False, **sizes)
    assert written_with(tmp_path / "d", **sizes)
    assert not written_with(tmp_path / "d", **{**sizes, "train_images": 3})
    assert not written_with(tmp_path / "d", seed=1, **sizes)
    assert not written_with(tmp_path / "d")  # the defaults are other sizes
    assert not written_with(tmp_path / "missing", **sizes)


def test_vision_pretraining_makes_tokens_that_name_their_class():
    """Tiles whose class is their brightness: after pretraining a linear head reads the class
    from every token, on tiles it did not train on."""
    config = load_config(resolve_config_path("digits-hybrid"))
    model, _ = build_mllm(config, seed=0)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=g)
    pixels = labels.float().view(-1, 1, 1, 1) / 2 - 0.75 + 0.1 * torch.randn(200, 3, 32, 32, generator=g)
    gh, gw = model.connector.out_grid(model.encoder.grid)
    images = LabelledTiles("images", pixels, labels.view(-1, 1, 1).expand(-1, gh, gw).contiguous())
    frames = LabelledTiles("frames", pixels, labels.view(-1, 1, 1).expand(-1, *model.video_connector.out_grid(
        model.encoder.grid)).contiguous(), connector="video_connector")
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    accuracy = pretrain_vision(model, [images, frames], n_classes=4, steps=30, batch_size=16, progress=False)
    assert accuracy["images"] > 0.9 and accuracy["frames"] > 0.9, accuracy
    assert all(torch.equal(before[k], v) for k, v in model.lm.state_dict().items())  # the LM is not touched
    with pytest.raises(ValueError, match=rf"labels of shape \(N, {gh}, {gw}\) \(the connector's token grid\)"):
        pretrain_vision(model, [LabelledTiles("bad", pixels, labels.view(-1, 1, 1), connector="connector")],
                        n_classes=4, steps=1, progress=False)


def test_bpe_tokenizer_is_short_on_its_questions_and_encodes_any_text(tmp_path):
    questions = [f"What digit is in row {r}, column {c}?\n<image>" for r in range(1, 9) for c in range(1, 9)] * 20
    spec = train_bpe(questions + ["Read row 2.", "3914"], tmp_path / "tokenizer.json")
    tokenizer = load_tokenizer(spec)
    ids = tokenizer.encode("What digit is in row 2, column 3?")
    assert len(ids) <= 14 < len("What digit is in row 2, column 3?")
    assert tokenizer.encode("3914") == [tokenizer.token_to_id(d) for d in "3914"]  # digits stay single tokens
    for text in ("Grüße, 世界! 12", "<image> after text"):
        assert tokenizer.decode(tokenizer.encode(text), skip_special=False) == text
    rendered = get_template("chatml").render([{"role": "user", "content": "Read row 2."},
                                              {"role": "assistant", "content": "3914"}], tokenizer)
    assert len(rendered.ids) < 20  # "user" / "assistant" are merged too


def _figures(model: str, scores: list[float], ms: list[float]) -> dict:
    splits = {}
    for i, (kind, size) in enumerate([("image", 4), ("image", 16), ("image", 64), ("video", 8), ("video", 32),
                                      ("video", 128)]):
        qtypes = ("digit_at", "read_row") if kind == "image" else ("frame_digit", "first_frame")
        by_type = {q: {"n": 10, "exact_match": scores[i % 3]} for q in qtypes}
        splits[f"{kind} {size}"] = {"kind": kind, "size": size, "by_type": by_type,
                                    "prefill_seconds_per_answer": ms[i] / 1000, "overall": {"n": 20, "exact_match": scores[i % 3],
                                                "mean_visual_tokens": size * 4.0}, "position_blind": {}}
    return {"model": model, "eval": splits}


def test_summary_sentences_are_written_from_the_figures():
    hybrid = _figures("hybrid", [0.96, 0.5, 0.25], [10, 20, 40, 10, 20, 40])
    twin = _figures("attention", [0.9, 0.2, 0.1], [5, 20, 80, 5, 20, 80])
    text = summary([hybrid, twin])[0]
    assert "the hybrid model answers 96% of them at the training sizes, 50% at 4x and 25% at 16x" in text
    assert "the attention model answers 90%" in text
    assert "Reading the prompt (prefill), the hybrid LM is faster than the attention LM" in text
    assert "speed ratio (attention / hybrid time) of 2.00" in text and "against 0.50" in text
