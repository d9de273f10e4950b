"""Hugging Face <-> ours: tiny random models built by transformers itself, converted by the
production converter, compared on logits (fp32, max |diff| <= 1e-4), on 20 greedy tokens
(our explicit state vs their cache) and after a round trip back to transformers."""

import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _hf_dirs import conversion_fails, edited

from hybrid_mllm.convert import ConversionError, cli, convert_hf, load_hf, save_hf
from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.config import load_config, parse_config
from hybrid_mllm.core.presets import resolve_config_path

VOCAB, ATOL, NEW_TOKENS = 300, 1e-4, 20  # vocab >= the default byte tokenizer's 263
SMALL = {"vocab_size": VOCAB, "hidden_size": 64, "initializer_range": 0.1}
JAMBA = {**SMALL, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "mamba_d_state": 8}
# Layouts: name -> (JambaConfig overrides, save_pretrained kwargs)
JAMBA_LAYOUTS = {
    # the paper's plan: 1 attention : 7 Mamba, MoE every other layer, top-2 of 4, GQA, untied head
    "paper-8L": ({"num_hidden_layers": 8, "attn_layer_period": 8, "attn_layer_offset": 4, "num_experts": 4,
                  "num_experts_per_tok": 2, "expert_layer_period": 2, "expert_layer_offset": 1},
                 {"max_shard_size": "200KB"}),  # sharded, with an index
    # attention first, one expert (plain MLPs everywhere), tied head, Mamba variants
    "dense-tied": ({"num_hidden_layers": 4, "attn_layer_period": 2, "attn_layer_offset": 0, "num_experts": 1,
                    "tie_word_embeddings": True, "mamba_conv_bias": False, "mamba_proj_bias": True,
                    "mamba_dt_rank": 8, "mamba_d_conv": 3, "mamba_expand": 1}, {}),
    # top-1 of 3 experts every third layer, multi-head attention, packed expert tensors on disk
    "top1-packed": ({"num_hidden_layers": 6, "attn_layer_period": 3, "attn_layer_offset": 1, "num_experts": 3,
                     "num_experts_per_tok": 1, "expert_layer_period": 3, "expert_layer_offset": 2,
                     "num_key_value_heads": 4}, {"save_original_format": False}),
}


def _save_hf(path, config, seed=0, **save_kwargs):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(path, **save_kwargs)
    return model


def _ids(batch=2, length=37, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _greedy(model, ids, n):
    """Greedy decoding through our explicit state: prefill, then one token at a time."""
    out = model(ids, num_logits=1)
    tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(n - 1):
        out = model(tokens[-1], state=out.state)
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, 1)


@torch.no_grad()
def _check_parity(hf_model, ours):
    """Same logits, and the same 20 greedy tokens (our state vs their cache)."""
    ids = _ids()
    theirs = hf_model(ids).logits
    diff = (ours(ids).logits - theirs).abs().max().item()
    assert diff <= ATOL, f"logits differ by {diff:.2e}"
    prompt = _ids(1, 7, seed=1)
    hf_model.generation_config.eos_token_id = None  # 20 tokens on both sides, whatever they are
    expected = hf_model.generate(prompt, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0)
    assert torch.equal(_greedy(ours, prompt, NEW_TOKENS), expected[:, prompt.shape[1]:])


def _round_trip(ours, config, tmp_path):
    """ours -> HF directory -> transformers loads it -> the same logits."""
    save_hf(ours, config, tmp_path / "back")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = _ids()
    with torch.no_grad():
        diff = (back(ids).logits - ours(ids).logits).abs().max().item()
    assert diff <= ATOL, f"round trip logits differ by {diff:.2e}"


@pytest.mark.parametrize("layout", JAMBA_LAYOUTS)
def test_jamba_parity_and_round_trip(tmp_path, layout):
    overrides, save_kwargs = JAMBA_LAYOUTS[layout]
    hf_model = _save_hf(tmp_path / "hf", transformers.JambaConfig(**{**JAMBA, **overrides}), **save_kwargs)
    out, config = convert_hf(tmp_path / "hf", tmp_path / "ours")
    loaded = load_checkpoint(out)  # through our own checkpoint format
    assert loaded.config.model == config.model
    ours = loaded.model.lm
    _check_parity(hf_model, ours.eval())
    _round_trip(ours, config, tmp_path)


def test_jamba_plan_is_read_from_periods_and_offsets(tmp_path):
    overrides, _ = JAMBA_LAYOUTS["paper-8L"]
    _save_hf(tmp_path / "hf", transformers.JambaConfig(**{**JAMBA, **overrides}))
    _, config = load_hf(tmp_path / "hf")
    assert config.model.layers == ["mamba"] * 4 + ["attention"] + ["mamba"] * 3
    assert config.model.ffn_layers == ["mlp", "moe"] * 4
    assert config.model.ffns["moe"]["n_experts"] == 4 and config.model.ffns["moe"]["top_k"] == 2
    assert not config.model.ffns["moe"]["normalize_top_k"]  # Jamba's router does not renormalise


def test_mamba_parity_and_round_trip(tmp_path):
    config = transformers.MambaConfig(**SMALL, num_hidden_layers=4, state_size=8)
    hf_model = _save_hf(tmp_path / "hf", config)
    ours, ours_config = load_hf(tmp_path / "hf")
    assert ours_config.model.ffn_layers == ["none"] * 4 and ours_config.model.tie_embeddings
    _check_parity(hf_model, ours)
    _round_trip(ours, ours_config, tmp_path)


@pytest.mark.parametrize("head_dim", [None, 24])  # 24: heads wider than hidden_size / heads
def test_llama_parity_and_round_trip(tmp_path, head_dim):
    config = transformers.LlamaConfig(**SMALL, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                                      num_key_value_heads=2, attention_bias=True, mlp_bias=True, head_dim=head_dim,
                                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    hf_model = _save_hf(tmp_path / "hf", config)
    ours, ours_config = load_hf(tmp_path / "hf")
    assert ours_config.model.mixers["attention"]["rope_theta"] == 500000.0
    assert ours_config.model.mixers["attention"]["head_dim"] == head_dim
    _check_parity(hf_model, ours)
    _round_trip(ours, ours_config, tmp_path)


def test_our_own_jamba_exports_to_transformers(tmp_path):
    """A model built from our YAML (not from transformers) loads in transformers with the same logits."""
    raw = {"name": "ours", "model": {
        "vocab_size": VOCAB, "d_model": 64, "n_layer": 4, "attn_layer_period": 4, "attn_layer_offset": 2,
        "expert_layer_period": 2, "expert_layer_offset": 1, "tie_embeddings": False,
        "mixers": {"mamba": {"d_state": 8, "inner_norms": True}, "attention": {"n_head": 4, "n_kv_head": 1}},
        "mlp": {"d_hidden": 96}, "moe": {"n_experts": 4, "top_k": 2, "d_hidden": 96}}}
    config = parse_config(raw)
    model = build_model(config, seed=0).eval()
    out, arch = save_hf(model, config, tmp_path / "hf")
    assert arch == "JambaForCausalLM"
    hf = transformers.JambaConfig.from_pretrained(out)  # the plan as a period/offset that gives it
    assert hf.layers_block_type == config.model.layers == ["mamba", "mamba", "attention", "mamba"]
    assert hf.layers_num_experts == [1, 4, 1, 4]
    _round_trip(model, config, tmp_path)


def test_dtype_is_the_stored_one_unless_chosen(tmp_path):
    config = transformers.LlamaConfig(**SMALL, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    assert load_hf(tmp_path / "hf")[0].embed.weight.dtype == torch.bfloat16
    model, _ = load_hf(tmp_path / "hf", dtype="float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ---- bad input: one clear error, nothing written ------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama") / "hf"
    config = transformers.LlamaConfig(**SMALL, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    _save_hf(path, config)
    return path




def test_shape_that_does_not_match_the_config(llama_dir, tmp_path):
    src = edited(llama_dir, tmp_path, config=lambda hf: hf.update(intermediate_size=128))
    conversion_fails(convert_hf, src, tmp_path, "does not match its config.json (LlamaForCausalLM):",
                   "shape mismatch: model.layers.0.mlp.down_proj.weight is (64, 96), config.json implies (64, 128)",
                   "... and 2 more (shape mismatch: 6 in all)")


def test_missing_and_unexpected_tensors_are_listed_by_name(llama_dir, tmp_path):
    def edit(weights):
        del weights["model.layers.1.self_attn.q_proj.weight"]
        weights["model.layers.1.self_attn.qq_proj.weight"] = weights.pop("model.layers.0.self_attn.k_proj.weight")

    message = conversion_fails(convert_hf, edited(llama_dir, tmp_path, tensors=edit), tmp_path,
                             "unexpected tensor: model.layers.1.self_attn.qq_proj.weight")
    assert message.splitlines()[1:3] == ["  missing tensor: model.layers.0.self_attn.k_proj.weight",
                                         "  missing tensor: model.layers.1.self_attn.q_proj.weight"]


def test_truncated_file(llama_dir, tmp_path):
    src = edited(llama_dir, tmp_path)
    with open(src / "model.safetensors", "r+b") as f:
        f.truncate(5000)
    conversion_fails(convert_hf, src, tmp_path, "is not a readable safetensors file", "truncated or corrupt")


def test_pickle_weights_are_refused(llama_dir, tmp_path):
    src = edited(llama_dir, tmp_path)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    conversion_fails(convert_hf, src, tmp_path, "only PyTorch pickle weights (*.bin), which we never load")


def test_missing_shard(tmp_path):
    overrides, save_kwargs = JAMBA_LAYOUTS["paper-8L"]
    _save_hf(tmp_path / "hf", transformers.JambaConfig(**{**JAMBA, **overrides}), **save_kwargs)
    shards = sorted((tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    conversion_fails(convert_hf, tmp_path / "hf", tmp_path, "incomplete: missing shard(s)", shards[1].name)


@pytest.mark.parametrize(("edit", "messages"), [
    (lambda hf: hf.update(architectures=["GPT2LMHeadModel"]),
     ["architectures GPT2LMHeadModel cannot be converted", "JambaForCausalLM, MambaForCausalLM, LlamaForCausalLM"]),
    (lambda hf: hf.update(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
     ["rope_type 'llama3' is not supported"]),
    (lambda hf: hf.update(hidden_act="gelu", head_dim=0.5),
     ["hidden_act: 'gelu' is not supported", "head_dim: expected a positive int, got 0.5"]),
])
def test_unsupported_settings_are_named(llama_dir, tmp_path, edit, messages):
    conversion_fails(convert_hf, edited(llama_dir, tmp_path, config=edit), tmp_path, *messages)


def test_a_model_that_maps_to_no_architecture_is_refused(tmp_path):
    config = load_config(resolve_config_path("hybrid-tiny"))
    with pytest.raises(ConversionError, match="JambaForCausalLM: mixers.mamba.inner_norms must be true"):
        save_hf(build_model(config, seed=0), config, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cli_converts_both_ways(llama_dir, tmp_path, capsys):
    assert cli.main([str(llama_dir), str(tmp_path / "ours"), "--dtype", "bfloat16"]) == 0
    assert "hybrid-mllm checkpoint" in capsys.readouterr().out
    assert cli.main([str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert json.loads((tmp_path / "back" / "config.json").read_text())["dtype"] == "bfloat16"


def test_cli_refuses_vision_flags_for_language_models(llama_dir, tmp_path):
    with pytest.raises(ConversionError, match="^--feature-layer and --keep-cls: for vision towers only, not a "
                                              "language model$"):
        cli.main([str(llama_dir), str(tmp_path / "ours"), "--feature-layer", "-1", "--keep-cls"])
    assert cli.main([str(llama_dir), str(tmp_path / "ours")]) == 0
    with pytest.raises(ConversionError, match="^--keep-cls: for vision towers only, not a hybrid-mllm checkpoint$"):
        cli.main([str(tmp_path / "ours"), str(tmp_path / "back"), "--keep-cls"])
    assert not (tmp_path / "back").exists()


def test_cli_error_is_one_message_without_traceback(llama_dir, tmp_path):
    src = edited(llama_dir, tmp_path, config=lambda hf: hf.update(architectures=["BertModel"]))
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.convert.cli", str(src), str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "error: ConversionError" in r.stderr and "BertModel" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
