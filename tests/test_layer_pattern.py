"""Nemotron-H's layer pattern, FFN-only layers and the per-model multipliers as config options."""

import pytest
import torch

from hybrid_mllm.core import ConfigError
from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import parse_config

BASE = {"vocab_size": 50, "d_model": 32, "mixers": {"attention": {"n_head": 4}}, "mlp": {"d_hidden": 48}}


def _config(**model):
    return parse_config({"model": {**BASE, **model}})


def _problems(**model):
    with pytest.raises(ConfigError) as info:
        _config(**model)
    return info.value.problems


def test_pattern_expands_to_one_part_per_layer():
    m = _config(layer_pattern="*-*E", ssm_mixer="mamba", moe={"n_experts": 2, "top_k": 1}).model
    assert m.n_layer == 4
    assert m.layers == ["attention", "none", "attention", "none"]
    assert m.ffn_layers == ["none", "mlp", "none", "moe"]


def test_pattern_names_its_components():
    m = _config(layer_pattern="M*-", ssm_mixer="mamba", pattern_mlp="moe").model
    assert m.layers == ["mamba", "attention", "none"] and m.ffn_layers == ["none", "none", "moe"]


def test_unknown_symbol_names_the_field_the_symbol_and_the_valid_ones():
    problems = _problems(layer_pattern="*-X", ssm_mixer="mamba")
    assert problems == ["model.layer_pattern[2]: unknown symbol 'X' (valid: 'M' (mamba), '*' (attention), "
                        "'-' (mlp), 'E' (moe))"]


def test_pattern_problems_are_reported_together():
    problems = _problems(layer_pattern="*-", n_layer=3, layers=["attention"] * 3, pattern_mlp="mpl")
    assert "model.layers: give either 'layer_pattern' or 'layers', not both" in problems
    assert "model.layer_pattern: has 2 symbols but n_layer is 3" in problems
    assert any(p.startswith("model.pattern_mlp: unknown ffn 'mpl'. Did you mean 'mlp'?") for p in problems)
    assert _problems(layer_pattern=7, n_layer=2) == ["model.layer_pattern: expected a non-empty string of M, *, -, E, "
                                          "got int 7"]


def test_explicit_none_mixer_and_the_empty_layer():
    m = _config(n_layer=2, layers=["attention", "none"], ffn_layers=["none", "mlp"]).model
    assert m.layers == ["attention", "none"]
    assert _problems(n_layer=1, layers=["none"], ffn_layers="none") == [
        "model.layers[0]: a layer needs a mixer or an FFN, not none and none"]


def test_ffn_only_layer_has_one_norm_no_state_and_decodes():
    model = build_model(_config(layer_pattern="*-*-", pattern_mlp="relu2_mlp",
                                relu2_mlp={"d_hidden": 40}), seed=0).eval()
    names = {n for n, _ in model.named_parameters() if n.startswith("blocks.1.")}
    assert names == {"blocks.1.ffn_norm.weight", "blocks.1.ffn.up.weight", "blocks.1.ffn.down.weight"}
    assert model.init_state(2)[1] == () and model.blocks[1].mixer.state_specs == ()
    ids = torch.randint(0, BASE["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5])
        steps = [out.logits]
        for t in range(5, 9):
            out = model(ids[:, t:t + 1], state=out.state)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_residual_and_logits_multipliers():
    plain = build_model(_config(layer_pattern="*-"), seed=0).eval()
    scaled = build_model(_config(layer_pattern="*-", residual_multiplier=0.5, logits_multiplier=0.25), seed=0).eval()
    ids = torch.randint(0, BASE["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    x = plain.embed(ids)
    for block in plain.blocks:  # by hand: x + 0.5 * part(norm(x)), for the one part of each layer
        norm, part = (block.mixer_norm, block.mixer) if block.mixer_norm is not None else (block.ffn_norm, block.ffn)
        x = x + 0.5 * part(norm(x))[0]
    expected = plain.lm_head(plain.norm(x)) * 0.25
    torch.testing.assert_close(scaled(ids).logits, expected)
    assert any(p.startswith("model.logits_multiplier: expected float") for p in _problems(
        layer_pattern="*-", logits_multiplier="big"))
