"""The train: section: every problem at once, with its YAML path; key=value overrides."""

import pytest

from hybrid_mllm.core.errors import ConfigError
from hybrid_mllm.train.config import apply_overrides, parse_train

STAGE = {"name": "a", "data": "d.jsonl", "trainable": ["connector", "lm"], "lr": 1e-3, "steps": 3}


def test_stage_problems_are_listed_with_paths():
    raw = {"sed": 1, "stages": [{**STAGE, "trainable": ["conector", "lm"], "lr": {"lm": 1e-3}, "steps": 0}]}
    with pytest.raises(ConfigError) as info:
        parse_train(raw, source="c.yaml", base_dir=".")
    lines = str(info.value).splitlines()
    assert lines[0] == "c.yaml has 3 problems"
    assert "  train.stages[0].trainable[0]: unknown part 'conector'. Did you mean 'connector'? " \
           "(allowed: encoder, connector, lm)" in lines
    assert "  train.stages[0].steps: must be >= 1, got 0" in lines
    assert any(line.startswith("  train.sed: unknown option. Did you mean 'seed'?") for line in lines)


def test_per_part_learning_rates_must_cover_the_trainable_parts():
    with pytest.raises(ConfigError, match=r"train.stages\[0\].lr: no learning rate for 'connector'"):
        parse_train({"stages": [{**STAGE, "lr": {"lm": 1e-3}}]}, source="c", base_dir=".")


def test_missing_section_and_duplicate_names():
    with pytest.raises(ConfigError, match="a training config needs"):
        parse_train(None, source="c", base_dir=".")
    with pytest.raises(ConfigError, match="stage names must be unique"):
        parse_train({"stages": [STAGE, STAGE]}, source="c", base_dir=".")


def test_overrides_set_nested_keys_and_list_items():
    raw = {"train": {"stages": [dict(STAGE)]}}
    apply_overrides(raw, ["train.stages.0.steps=50", "train.seed=3", "model.d_model=64"], source="c")
    assert raw["train"]["stages"][0]["steps"] == 50 and raw["train"]["seed"] == 3 and raw["model"]["d_model"] == 64
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(raw, ["oops"], source="c")
    apply_overrides(raw, ["train.stages.-1.steps=7"], source="c")
    assert raw["train"]["stages"][0]["steps"] == 7
    for key in ("--1", "²", "1_0", "-"):
        with pytest.raises(ConfigError, match=f"train.stages is a list: give an item number, not '{key}'"):
            apply_overrides(raw, [f"train.stages.{key}.steps=5"], source="c")


def test_num_workers_is_not_an_option():  # it was parsed and never used
    with pytest.raises(ConfigError, match="train.num_workers: unknown option"):
        parse_train({"stages": [STAGE], "num_workers": 2}, source="c", base_dir=".")
