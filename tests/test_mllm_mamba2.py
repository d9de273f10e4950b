"""An HF-style LLaVA on a Mamba-2 hybrid LM (Nemotron-H): converted with logit parity, trained
in two stages (tiny, few steps) from the converted weights, and answered by hybrid-run; and the
mllm-mamba2 preset, which assembles the same kind of model from YAML."""

import subprocess
import sys

import pytest
import torch
import yaml
from _train_fixtures import losses, write_dataset
from PIL import Image

transformers = pytest.importorskip("transformers")

from test_convert_mamba2 import FALCON, GRANITE, NEMOTRON

from hybrid_mllm.convert import convert_llava
from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.runtime.splice import embed
from hybrid_mllm.runtime.visual_inputs import VisualLoader
from hybrid_mllm.train.cli_train import load_train_config, run_training

ATOL, IMAGE_ID, VOCAB = 1e-4, 259, 300  # IMAGE_ID: our byte tokenizer's <image>, used as LLaVA's too
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8}


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """(their LLaVA on a Nemotron-H LM, our converted checkpoint directory)."""
    root = tmp_path_factory.mktemp("llava-nemotron")
    text = transformers.NemotronHConfig(vocab_size=VOCAB, hidden_size=64, initializer_range=0.1, **NEMOTRON)
    config = transformers.LlavaConfig(vision_config=transformers.CLIPVisionConfig(**VISION), text_config=text,
                                      image_token_index=IMAGE_ID)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(root / "hf")
    out, _ = convert_llava(root / "hf", root / "ours")
    return model, out


@torch.no_grad()
def test_converted_llava_on_nemotron_h_matches_transformers(llava, tmp_path):
    hf_model, out = llava
    ours = load_checkpoint(out)
    assert ours.config.model.layers == ["mamba2", "none", "attention", "none", "mamba2"]
    path = tmp_path / "image.png"
    Image.fromarray((torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
                    .numpy()).save(path)
    g = torch.Generator().manual_seed(0)
    before, after = torch.randint(0, 256, (5,), generator=g), torch.randint(0, 256, (7,), generator=g)
    our_ids = torch.cat([before, torch.tensor([IMAGE_ID]), after])
    items, n_visual = VisualLoader(ours.model, ours.config.vision).load(our_ids.tolist(), [str(path)], [])
    batch = embed(ours.model.eval(), [our_ids], [items])
    logits = ours.model(batch.embeds, batch.mask).logits
    their_ids = torch.cat([before, torch.full((n_visual,), IMAGE_ID), after])[None]
    expected = hf_model(input_ids=their_ids, pixel_values=items[0].pixels).logits
    diff = (logits - expected).abs().max().item()
    assert diff <= ATOL, f"LLaVA-on-Nemotron-H logits differ by {diff:.2e}"


TEXT_MODELS = {  # language models with multipliers that transformers' LLaVA does (not) apply
    "falcon_h1": lambda: transformers.FalconH1Config(vocab_size=VOCAB, hidden_size=64, initializer_range=0.1,
                                                     mamba_rms_norm=True, **FALCON),
    "granite": lambda: transformers.GraniteMoeHybridConfig(
        vocab_size=VOCAB, hidden_size=64, initializer_range=0.1, **GRANITE, num_hidden_layers=2, num_local_experts=0,
        layer_types=["full_attention", "mamba"]),
}


@pytest.mark.parametrize("family", TEXT_MODELS)
@torch.no_grad()
def test_llava_language_model_computes_what_transformers_computes(family, tmp_path):
    """Falcon-H1's embedding and lm_head multipliers and Granite's logits_scaling are not applied
    inside a LLaVA; the multipliers folded into weights are."""
    config = transformers.LlavaConfig(vision_config=transformers.CLIPVisionConfig(**VISION),
                                      text_config=TEXT_MODELS[family](), image_token_index=IMAGE_ID)
    torch.manual_seed(0)
    hf_model = transformers.LlavaForConditionalGeneration(config).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    out, ours_config = convert_llava(tmp_path / "hf", tmp_path / "ours")
    assert ours_config.model.logits_multiplier == 1.0
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    diff = (load_checkpoint(out).model.lm.eval()(ids).logits - hf_model(input_ids=ids).logits).abs().max().item()
    assert diff <= ATOL, f"LLaVA-on-{family} logits differ by {diff:.2e}"


def test_two_stages_from_the_converted_llava_then_hybrid_run(llava, tmp_path):
    _, out = llava
    raw = yaml.safe_load((out / "config.yaml").read_text())
    data = write_dataset(tmp_path)
    raw["train"] = {"output_dir": str(tmp_path / "run"), "seed": 0, "log_every": 1, "stages": [
        {"name": "align", "data": str(data), "trainable": ["connector"], "lr": 1e-2, "steps": 2, "batch_size": 4},
        {"name": "finetune", "data": str(data), "trainable": ["connector", "lm"], "lr": 3e-3, "steps": 3,
         "batch_size": 4}]}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    config, train = load_train_config(str(path), [])
    final = run_training(config, train, init=out)
    assert len(losses(tmp_path / "run", "align")) == 2 and len(losses(tmp_path / "run", "finetune")) == 3
    start, trained = load_checkpoint(out).model, load_checkpoint(final).model
    assert not torch.equal(trained.lm.blocks[0].mixer.in_proj.weight, start.lm.blocks[0].mixer.in_proj.weight)
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.runtime.cli_run", "--checkpoint", str(final),
                        "--image", str(tmp_path / "img" / "0.png"), "--prompt", "<image>\nWhat colour?",
                        "--max-new-tokens", "4", "-v"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "new tokens" in r.stderr


def test_mllm_mamba2_preset_assembles_and_decodes():
    config = load_config(resolve_config_path("mllm-mamba2"))
    model, _ = build_mllm(config, seed=0)
    assert "mamba2" in config.model.layers and "relu2_mlp" in config.model.ffn_layers
    lm = model.lm.eval()
    ids = torch.randint(0, 263, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = lm(ids).logits[:, -1]
        out = lm(ids[:, :8])
        for t in range(8, 12):
            out = lm(ids[:, t:t + 1], state=out.state)
    torch.testing.assert_close(out.logits[:, -1], full, atol=1e-4, rtol=1e-4)


def test_hybrid_run_answers_from_the_mllm_mamba2_preset(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((torch.rand(48, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
                    .numpy()).save(path)
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.runtime.cli_run", "--config", "mllm-mamba2", "--image",
                        str(path), "--prompt", "What is shown?", "--max-new-tokens", "4", "-v"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "visual): prefill" in r.stderr and "new tokens" in r.stderr
