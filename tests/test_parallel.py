"""The parallel mixer: its output is the sum of its parts run alone, its state their states
concatenated, bad parts are one line naming them, and it exports through its parts' own
declarations (a Mamba-2 part as its SSD node)."""

import pytest
import torch

from hybrid_mllm.core.config import parse_config
from hybrid_mllm.core.errors import ConfigError
from hybrid_mllm.plugins.mixers.attention import Attention
from hybrid_mllm.plugins.mixers.mamba2 import Mamba2
from hybrid_mllm.plugins.mixers.parallel import Parallel

MAMBA2 = {"d_state": 8, "headdim": 8, "chunk_size": 8, "d_inner": 24}
ATTENTION = {"n_head": 2, "n_kv_head": 1, "head_dim": 12, "rope": True, "rotary_dim": 6}
PARTS = {"mamba2": MAMBA2, "attention": ATTENTION}


def test_output_is_the_sum_of_the_parts_and_state_their_concatenation():
    torch.manual_seed(0)
    mixer = Parallel(16, parts=PARTS).eval()
    mamba2, attention = Mamba2(16, **MAMBA2), Attention(16, **ATTENTION)
    mamba2.load_state_dict(mixer.parts["mamba2"].state_dict())
    attention.load_state_dict(mixer.parts["attention"].state_dict())
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        y, state = mixer(x)
        y_m, state_m = mamba2(x)
        y_a, state_a = attention(x)
    assert (y - (y_m + y_a)).abs().max() <= 1e-6
    assert [s.name for s in mixer.state_specs] == ["mamba2.conv_state", "mamba2.ssm_state", "attention.k",
                                                   "attention.v", "attention.kmask"]
    assert [s.seq_dim for s in mixer.state_specs] == [None, None, 2, 2, 1]
    assert all(torch.equal(a, b) for a, b in zip(state, (*state_m, *state_a), strict=True))


@pytest.mark.parametrize("parts, says", [
    ({"mambaa": {}}, "parts.mambaa: unknown mixer 'mambaa'. Did you mean 'mamba'? Available: attention, mamba, "),
    ({"attention": {"n_hed": 2}}, "parts.attention.n_hed: unknown option. Did you mean 'n_head'?"),
    ({"attention": {"n_head": 3}}, "parts.attention: n_head (3) must divide d_model (16), or set head_dim"),
    ({"parallel": {}}, "parts.parallel: a parallel mixer cannot hold another"),
    ({}, "parts: expected a mapping of mixer name -> options, at least one, got {}"),
])
def test_bad_parts_are_named(parts, says):
    with pytest.raises(ValueError) as info:
        Parallel(16, parts=parts)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_yaml_problems_carry_the_path():
    raw = {"model": {"vocab_size": 10, "d_model": 16, "n_layer": 1, "layers": ["parallel"],
                     "mixers": {"parallel": {"parts": {"attention": {"n_head": "two"}}}}}}
    with pytest.raises(ConfigError, match=r"model.mixers.parallel: parts.attention.n_head: expected int, got str"):
        parse_config(raw)
    with pytest.raises(ConfigError, match=r"model.mixers.parallel.parts: required option is missing"):
        parse_config({"model": {**raw["model"], "mixers": {}}})


@pytest.mark.parametrize("flavour", ["standard", "custom"])
def test_export_contract(flavour):
    pytest.importorskip("onnxruntime")
    if flavour == "custom":
        pytest.importorskip("onnxruntime_extensions")
    from hybrid_mllm.testing import check_export

    measured = check_export(Parallel, d_model=16, options={"parts": PARTS}, flavour=flavour)
    assert max(measured.values()) < 1e-4
