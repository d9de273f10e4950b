"""Config: every problem at once, with its YAML path; plans; round trip."""

import textwrap

import pytest
import torch

from hybrid_mllm.core import ConfigError
from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config, parse_config, save_config
from hybrid_mllm.core.presets import preset_names, resolve_config_path


def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _problems(path):
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).splitlines()


def test_all_problems_reported_at_once_with_paths(tmp_path):
    path = _write(tmp_path, """\
        model:
          vocab_size: 100
          d_model: 130
          n_layer: 3
          layers: [mamab, attention, mamba]
          mixers:
            mamba: {d_stat: 16, expand: two}
            attention: {n_head: 4}
        """)
    assert _problems(path) == [
        f"{path} has 4 problems",
        "  model.layers[0]: unknown mixer 'mamab'. Did you mean 'mamba'? Available: attention, mamba, mamba2, none, "
        "parallel",
        "  model.mixers.attention: n_head (4) must divide d_model (130), or set head_dim",
        "  model.mixers.mamba.d_stat: unknown option. Did you mean 'd_state'? (allowed: d_state, d_conv, expand, "
        "dt_rank, dt_min, dt_max, dt_init_floor, conv_bias, bias, inner_norms, norm_eps, impl)",
        "  model.mixers.mamba.expand: expected int, got str 'two'",
    ]


def test_layer_list_of_the_wrong_length_and_unknown_keys(tmp_path):
    path = _write(tmp_path, """\
        modle: {}
        model: {vocab_size: 10, d_model: 8, n_layer: 3, layers: [mamba], n_layers: 2}
        """)
    problems = _problems(path)
    assert "  modle: unknown section. Did you mean 'model'? (allowed: name, model, vision, text, train)" in problems
    assert "  model.layers: has 1 entries but n_layer is 3" in problems
    assert any(p.startswith("  model.n_layers: unknown key. Did you mean 'n_layer'?") for p in problems)


@pytest.mark.parametrize(("text", "message"), [
    ("", "the file is empty: it needs a 'model:' section"),
    ("- 1\n- 2\n", "expected a mapping with a 'model:' section, got list [1, 2]"),
    ("model: [1\n", "YAML syntax error at line 2, column 1:"),
    ("name: x\n", "model: missing section"),
    ("model: {d_model: 8, n_layer: 2, layers: [mamba, mamba]}\n", "model.vocab_size: required key is missing"),
    ("model: {vocab_size: 8, d_model: 0, n_layer: 1, layers: [mamba]}\n", "model.d_model: must be >= 1, got 0"),
])
def test_bad_documents(tmp_path, text, message):
    problems = _problems(_write(tmp_path, text))
    assert any(message in p for p in problems), problems


def test_missing_file(tmp_path):
    assert _problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found: check the path"]


def test_jamba_periods_expand_to_lists():
    config = load_config(resolve_config_path("jamba-small"))
    assert config.model.layers == ["mamba"] * 4 + ["attention"] + ["mamba"] * 3
    assert config.model.ffn_layers == ["mlp", "moe"] * 4


def test_period_offset_out_of_range(tmp_path):
    path = _write(tmp_path, "model: {vocab_size: 8, d_model: 8, n_layer: 4, attn_layer_period: 2, attn_layer_offset: 2}\n")
    assert _problems(path) == [f"{path}: model.attn_layer_offset: expected an int in [0, 1], got int 2"]


def test_yaml_exponent_string_is_a_float():
    config = parse_config({"model": {"vocab_size": 8, "d_model": 8, "n_layer": 1, "layers": ["mamba"],
                                     "norm_eps": "1e-5", "mixers": {"mamba": {"dt_min": "1e-3"}}}})
    assert config.model.norm_eps == 1e-5 and config.model.mixers["mamba"]["dt_min"] == 1e-3


@pytest.mark.parametrize("preset", preset_names())
def test_round_trip_rebuilds_the_same_model(tmp_path, preset):
    config = load_config(resolve_config_path(preset))
    save_config(config, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == config
    a, b = build_model(config, seed=0), build_model(again, seed=0)
    ids = torch.randint(0, config.model.vocab_size, (1, 12))
    torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=0, atol=0)
