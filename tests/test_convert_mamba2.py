"""The Mamba-2 families <-> ours: tiny random models built by transformers, converted by the
production converter, compared on logits (fp32, <= 1e-4), on 20 greedy tokens (our explicit
state vs their cache), on decoding through our state vs our full forward, and after a round
trip back to transformers. Refused architectures and options: one line naming them."""

import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _hf_dirs import conversion_fails, edited
from test_convert_hf import ATOL, NEW_TOKENS, SMALL, VOCAB, _check_parity, _greedy, _ids, _round_trip, _save_hf

from hybrid_mllm.convert import cli, convert_hf, load_hf, save_hf
from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.config import load_config, parse_config
from hybrid_mllm.core.presets import resolve_config_path

MAMBA2 = {"state_size": 8, "head_dim": 16, "num_heads": 8, "n_groups": 2, "expand": 2, "chunk_size": 16}
NEMOTRON = {"ssm_state_size": 8, "mamba_head_dim": 16, "mamba_num_heads": 8, "n_groups": 2, "chunk_size": 16,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96,
            "layers_block_type": ["linear_attention", "mlp", "full_attention", "mlp", "linear_attention"]}
BAMBA = {"mamba_d_state": 8, "mamba_d_head": 16, "mamba_n_heads": 8, "mamba_n_groups": 2, "mamba_chunk_size": 16,
         "intermediate_size": 96, "num_hidden_layers": 3, "attn_layer_indices": None}
BAMBA_ATTENTION = {"num_attention_heads": 4, "num_key_value_heads": 2}
GRANITE = {"mamba_d_state": 8, "mamba_d_head": 16, "mamba_n_heads": 8, "mamba_n_groups": 2, "mamba_chunk_size": 16,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48, "shared_intermediate_size": 80,
           "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.015625,
           "logits_scaling": 8.0}
# Falcon-H1: d_ssm 96 (no multiple of hidden_size 64), wide heads, every multiplier away from 1
FALCON = {"num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
          "intermediate_size": 96, "mamba_d_ssm": 96, "mamba_n_heads": 6, "mamba_d_head": 16, "mamba_n_groups": 2,
          "mamba_d_state": 8, "mamba_chunk_size": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 1e5},
          "embedding_multiplier": 1.7, "lm_head_multiplier": 0.6, "key_multiplier": 0.8,
          "attention_in_multiplier": 1.3, "attention_out_multiplier": 0.7, "ssm_in_multiplier": 1.2,
          "ssm_out_multiplier": 0.9, "mlp_multipliers": [1.4, 0.75], "ssm_multipliers": [0.6, 1.5, 0.8, 1.25, 2.0]}
FAMILIES = {
    "mamba2": lambda: transformers.Mamba2Config(**SMALL, num_hidden_layers=3, **MAMBA2),
    "mamba2-tied": lambda: transformers.Mamba2Config(**SMALL, num_hidden_layers=2, tie_word_embeddings=True,
                                                     use_conv_bias=False, **MAMBA2),
    "nemotron_h": lambda: transformers.NemotronHConfig(**SMALL, **NEMOTRON),
    # heads wider than hidden_size / heads (Nemotron-H 4B: 32 x 128 on 3072)
    "nemotron_h-head-dim": lambda: transformers.NemotronHConfig(**SMALL, **{**NEMOTRON, "head_dim": 24}),
    "bamba": lambda: transformers.BambaConfig(**SMALL, **BAMBA),
    # attention in layer 1: GQA, bias, RoPE on half of each head (Bamba's partial_rotary_factor 0.5)
    "bamba-attention": lambda: transformers.BambaConfig(**SMALL, **{
        **BAMBA, **BAMBA_ATTENTION, "attn_layer_indices": [1], "attention_bias": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    # attention first and last, heads wider than hidden_size / heads, 3/4 of each rotated, tied head
    "bamba-head-dim": lambda: transformers.BambaConfig(**SMALL, **{
        **BAMBA, **BAMBA_ATTENTION, "attn_layer_indices": [0, 2], "head_dim": 24, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}}),
    # top-2 of 4 experts + a shared expert, no positional encoding (Granite 4.0 H), every multiplier
    "granite": lambda: transformers.GraniteMoeHybridConfig(
        **SMALL, **GRANITE, num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=2,
        layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"]),
    # the shared expert alone, RoPE, attention bias, tied head
    "granite-dense-rope": lambda: transformers.GraniteMoeHybridConfig(
        **SMALL, **GRANITE, num_hidden_layers=3, num_local_experts=0, position_embedding_type="rope",
        attention_bias=True, tie_word_embeddings=True, layer_types=["full_attention", "linear_attention", "mamba"]),
    # gated RMSNorm (norm before gate, Falcon-H1's default), no biases, untied
    "falcon_h1": lambda: transformers.FalconH1Config(**SMALL, **FALCON, mamba_rms_norm=True),
    # no Mamba norm (y * silu(z)), every bias, no conv bias, tied head, norm after the gate
    "falcon_h1-bias": lambda: transformers.FalconH1Config(
        **SMALL, **FALCON, mamba_rms_norm=False, attention_bias=True, mlp_bias=True, mamba_proj_bias=True,
        projectors_bias=True, mamba_conv_bias=False, tie_word_embeddings=True),
    "falcon_h1-gate-first": lambda: transformers.FalconH1Config(**SMALL, **FALCON, mamba_rms_norm=True,
                                                               mamba_norm_before_gate=False),
}
SAVE_KWARGS = {"granite": {"save_original_format": False}}  # transformers' packed layout; the others: original


@torch.no_grad()
def _check_parity_without_their_cache(hf_model, ours):
    """Attention-free Bamba: transformers' generate fails on a cache without attention layers
    (get_seq_length), so their greedy tokens come from full forwards, one more token each time."""
    ids = _ids()
    diff = (ours(ids).logits - hf_model(ids, use_cache=False).logits).abs().max().item()
    assert diff <= ATOL, f"logits differ by {diff:.2e}"
    tokens = _ids(1, 7, seed=1)
    for _ in range(NEW_TOKENS):
        tokens = torch.cat([tokens, hf_model(tokens, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(_greedy(ours, _ids(1, 7, seed=1), NEW_TOKENS), tokens[:, 7:])


@torch.no_grad()
def _round_trip_without_their_cache(ours, config, tmp_path):
    save_hf(ours, config, tmp_path / "back")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = _ids()
    diff = (back(ids, use_cache=False).logits - ours(ids).logits).abs().max().item()
    assert diff <= ATOL, f"round trip logits differ by {diff:.2e}"


@torch.no_grad()
def _decode_equals_full(ours):
    """Prefill 9 tokens, then one at a time through our explicit state == the full forward."""
    ids = _ids(2, 15, seed=2)
    full = ours(ids).logits
    out = ours(ids[:, :9])
    steps = [out.logits]
    for t in range(9, ids.shape[1]):
        out = ours(ids[:, t:t + 1], state=out.state)
        steps.append(out.logits)
    diff = (torch.cat(steps, 1) - full).abs().max().item()
    assert diff <= ATOL, f"decoding differs from the full forward by {diff:.2e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_decode_and_round_trip(tmp_path, family):
    hf_model = _save_hf(tmp_path / "hf", FAMILIES[family](), **SAVE_KWARGS.get(family, {}))
    out, config = convert_hf(tmp_path / "hf", tmp_path / "ours")
    loaded = load_checkpoint(out)  # through our own checkpoint format
    assert loaded.config.model == config.model
    ours = loaded.model.lm.eval()
    if family == "bamba":
        _check_parity_without_their_cache(hf_model, ours)
        _round_trip_without_their_cache(ours, config, tmp_path)
    else:
        _check_parity(hf_model, ours)
        _round_trip(ours, config, tmp_path)
    _decode_equals_full(ours)


def test_nemotron_h_layers_are_one_part_each(tmp_path):
    _save_hf(tmp_path / "hf", FAMILIES["nemotron_h"]())
    _, config = load_hf(tmp_path / "hf")
    assert config.model.layers == ["mamba2", "none", "attention", "none", "mamba2"]
    assert config.model.ffn_layers == ["none", "relu2_mlp", "none", "relu2_mlp", "none"]
    assert config.model.mixers["mamba2"]["dt_limit"][0] == config.model.mixers["mamba2"]["dt_min"]


def test_granite_multipliers_are_options_and_its_experts_a_shared_moe(tmp_path):
    _save_hf(tmp_path / "hf", FAMILIES["granite"]())
    _, config = load_hf(tmp_path / "hf")
    m = config.model
    assert (m.embedding_multiplier, m.residual_multiplier, m.logits_multiplier) == (12.0, 0.22, 1 / 8.0)
    assert m.ffn_layers == ["shared_moe"] * 4 and m.ffns["shared_moe"]["shared_d_hidden"] == 80
    assert not m.mixers["attention"]["rope"]


def test_nemotron_h_legacy_pattern_is_read(tmp_path):
    _save_hf(tmp_path / "hf", FAMILIES["nemotron_h"]())

    def legacy(hf):
        del hf["layers_block_type"]
        hf["hybrid_override_pattern"] = "M-*-M"

    _, config = load_hf(edited(tmp_path / "hf", tmp_path, config=legacy))
    assert config.model.layers == ["mamba2", "none", "attention", "none", "mamba2"]


def test_preset_exports_to_nemotron_h(tmp_path):
    """Our own preset (a Nemotron-H-like pattern, from YAML) loads in transformers with the same logits."""
    config = load_config(resolve_config_path("nemotron-h-small"))
    config.model.vocab_size = VOCAB  # the test ids' range
    model = build_model(config, seed=0).eval()
    _, arch = save_hf(model, config, tmp_path / "hf")
    assert arch == "NemotronHForCausalLM"
    _round_trip(model, config, tmp_path)


# ---- refused: one line naming the option, nothing written ----------------------------------


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    out = {}
    for family in ("mamba2", "nemotron_h", "bamba", "falcon_h1"):
        out[family] = tmp_path_factory.mktemp(family) / "hf"
        _save_hf(out[family], FAMILIES[family]())
    return out


def test_headdim_that_does_not_divide_the_width(dirs, tmp_path):
    src = edited(dirs["mamba2"], tmp_path, config=lambda hf: hf.update(head_dim=24))
    conversion_fails(convert_hf, src, tmp_path,
                     "num_heads: num_heads x head_dim (8 x 24) must equal the mixer width 128")


def test_groups_that_do_not_divide_the_heads(dirs, tmp_path):
    src = edited(dirs["mamba2"], tmp_path, config=lambda hf: hf.update(n_groups=3))
    conversion_fails(convert_hf, src, tmp_path, "n_groups: 3 groups must divide the 8 heads (num_heads)")


def test_nemotron_h_moe_layers_are_refused_by_name(dirs, tmp_path):
    src = edited(dirs["nemotron_h"], tmp_path, config=lambda hf: hf.update(
        layers_block_type=["linear_attention", "moe", "full_attention", "mlp", "linear_attention"]))
    conversion_fails(convert_hf, src, tmp_path, "layers_block_type: 'moe' layers are not supported")


def test_falcon_h1_layers_are_parallel_and_its_multipliers_folded(dirs, tmp_path):
    _, config = load_hf(dirs["falcon_h1"])
    m = config.model
    assert m.layers == ["parallel"] * 3 and m.ffn_layers == ["mlp"] * 3
    assert (m.embedding_multiplier, m.logits_multiplier) == (1.7, 0.6)
    parts = m.mixers["parallel"]["parts"]
    assert list(parts) == ["mamba2", "attention"]
    assert parts["mamba2"]["d_inner"] == 96 and "expand" not in parts["mamba2"]
    assert (parts["attention"]["head_dim"], parts["attention"]["rotary_dim"]) == (24, None)
    ours, ours_config = load_hf(dirs["falcon_h1"])
    save_hf(ours, ours_config, tmp_path / "back")
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert [back[k] for k in ("key_multiplier", "attention_in_multiplier", "ssm_in_multiplier")] == [1.0] * 3
    assert back["ssm_multipliers"] == [1.0] * 5 and back["mlp_multipliers"] == [1.0, 1.0]
    assert (back["embedding_multiplier"], back["lm_head_multiplier"], back["mamba_d_ssm"]) == (1.7, 0.6, 96)


@pytest.mark.parametrize("edit, says", [
    (lambda hf: hf.update(projectors_bias=True), ("projectors_bias (True) must equal mamba_proj_bias (False): our "
                                                  "Mamba-2 has one bias option for in_proj and out_proj")),
    (lambda hf: hf.update(ssm_multipliers=[1.0, 2.0]), "ssm_multipliers: expected a list of 5 numbers, got [1.0, 2.0]"),
    (lambda hf: hf.update(key_multiplier="big"), "key_multiplier: expected float, got 'big'"),
    (lambda hf: hf.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}),
     "rope_parameters: rope_type 'yarn' is not supported: only plain RoPE maps"),
    (lambda hf: hf.update(hidden_act="gelu"), "hidden_act: 'gelu' is not supported"),
])
def test_falcon_h1_settings_we_do_not_support_are_named(dirs, tmp_path, edit, says):
    message = conversion_fails(convert_hf, edited(dirs["falcon_h1"], tmp_path, config=edit), tmp_path, says)
    assert "has settings our model does not support:" in message


def test_bamba_attention_rotates_part_of_each_head(tmp_path):
    _save_hf(tmp_path / "hf", FAMILIES["bamba-head-dim"]())
    _, config = load_hf(tmp_path / "hf")
    m = config.model
    assert m.layers == ["attention", "mamba2", "attention"]
    assert (m.mixers["attention"]["head_dim"], m.mixers["attention"]["rotary_dim"]) == (24, 18)


def test_bamba_rotary_factor_that_gives_an_odd_width_is_refused(dirs, tmp_path):
    src = edited(dirs["bamba"], tmp_path, config=lambda hf: hf.update(
        attn_layer_indices=[1], num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                                        "partial_rotary_factor": 0.3125}))
    conversion_fails(convert_hf, src, tmp_path, "partial_rotary_factor: 0.3125 x head_dim 16 = 5 rotated dims is "
                                                "not supported: it must give an even number between 2 and head_dim")


def test_bamba_attention_indices_out_of_range(dirs, tmp_path):
    src = edited(dirs["bamba"], tmp_path, config=lambda hf: hf.update(attn_layer_indices=[3]))
    conversion_fails(convert_hf, src, tmp_path, "attn_layer_indices: expected a list of layer indices in [0, 3), "
                                                "got [3]")


@pytest.mark.parametrize("arch, says", [("Zamba2ForCausalLM", "shared attention blocks")])
def test_known_unsupported_architectures_say_why(dirs, tmp_path, arch, says):
    src = edited(dirs["mamba2"], tmp_path, config=lambda hf: hf.update(architectures=[arch]))
    message = conversion_fails(convert_hf, src, tmp_path, f"{arch} cannot be converted: ", says)
    assert "\n" not in message


def test_model_that_fits_no_mamba2_family_lists_why(tmp_path):
    config = load_config(resolve_config_path("nemotron-h-small"))
    config.model.residual_multiplier = 0.5
    with pytest.raises(Exception, match="residual_multiplier must be 1.0: NemotronHForCausalLM has no such"):
        save_hf(build_model(config, device="meta"), config, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_head_dim_is_refused_where_the_family_has_none(tmp_path):
    raw = {"name": "wide-heads", "model": {
        "vocab_size": VOCAB, "d_model": 64, "n_layer": 2, "layers": ["mamba2", "attention"],
        "mixers": {"mamba2": {"d_state": 8, "headdim": 16}, "attention": {"n_head": 4, "head_dim": 24}}}}
    config = parse_config(raw)
    with pytest.raises(Exception) as info:
        save_hf(build_model(config, device="meta"), config, tmp_path / "hf")
    assert ("GraniteMoeHybridForCausalLM: mixers.attention.head_dim (24) must be d_model / n_head (64 / 4): "
            "GraniteMoeHybridForCausalLM has no head_dim") in str(info.value)
    assert "BambaForCausalLM: mixers.attention.rope must be true" in str(info.value)


def test_cli_converts_nemotron_h_both_ways(dirs, tmp_path, capsys):
    assert cli.main([str(dirs["nemotron_h"]), str(tmp_path / "ours")]) == 0
    assert "2 mamba2 + 2 none + 1 attention; ffn 3 none + 2 relu2_mlp" in capsys.readouterr().out
    assert cli.main([str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    assert "NemotronHForCausalLM" in capsys.readouterr().out


def test_cli_refusal_is_one_line_without_traceback(dirs, tmp_path):
    src = edited(dirs["mamba2"], tmp_path, config=lambda hf: hf.update(architectures=["Zamba2ForCausalLM"]))
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.convert.cli", str(src), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Zamba2ForCausalLM cannot be converted" in r.stderr
