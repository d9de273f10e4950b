"""hybrid-export --onnx on a tiny multimodal hybrid with MoE, and the ONNX Runtime runtime.

One export (standard scan) serves the module. Tolerance: 1e-4 relative to max(1, |torch|)
in float32 (the gate's stated value); generation must be token-for-token identical.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")

from hybrid_mllm.core.build import build_mllm  # noqa: E402
from hybrid_mllm.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from hybrid_mllm.core.cli import run_cli  # noqa: E402
from hybrid_mllm.core.config import load_config  # noqa: E402
from hybrid_mllm.core.presets import PRESET_DIR  # noqa: E402
from hybrid_mllm.export import cli_export  # noqa: E402
from hybrid_mllm.runtime import cli_run  # noqa: E402
from hybrid_mllm.runtime.generate import GenerationConfig, TorchDecoder  # noqa: E402
from hybrid_mllm.runtime.onnx import ManifestError, load_onnx  # noqa: E402
from hybrid_mllm.runtime.pipeline import Pipeline, Request  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """(root, checkpoint dir, export dir): mllm-tiny cut to 3 layers (Mamba, attention, Mamba)
    with MoE in the middle and scaled token embeddings, exported by the CLI."""
    root = tmp_path_factory.mktemp("onnx")
    text = (PRESET_DIR / "mllm-tiny.yaml").read_text()
    text = text.replace("  n_layer: 4\n  layers: [mamba, mamba, attention, mamba]",
                        "  n_layer: 3\n  layers: [mamba, attention, mamba]\n  ffn_layers: [mlp, moe, mlp]\n"
                        "  embedding_multiplier: 3.0\n"
                        "  moe: {n_experts: 4, top_k: 2, d_hidden: 128}")
    (root / "config.yaml").write_text(text)
    config = load_config(root / "config.yaml")
    model, tokenizer = build_mllm(config, seed=0)
    save_checkpoint(model, config, root / "ckpt", tokenizer=tokenizer)
    assert cli_export.main(["--onnx", str(root / "ckpt"), str(root / "out")]) == 0
    return root, root / "ckpt", root / "out"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(root / "photo.png")
    (root / "frames").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "frames" / f"f{i}.png")
    return str(root / "photo.png"), str(root / "frames")


def test_manifest_describes_dynamic_graphs_and_measured_parity(export):
    root, _, out = export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["flavour"] == "standard" and manifest["custom_ops"] is None and manifest["template"] == "chatml"
    decoder = {v["name"]: v["shape"] for v in manifest["graphs"]["decoder"]["inputs"]}
    assert decoder["inputs_embeds"] == ["batch", "sequence", 128] and decoder["mask"] == ["batch", "sequence"]
    assert decoder["past.1.k"] == ["batch", 2, "past_sequence", 32]
    assert decoder["past.0.ssm_state"] == ["batch", 256, 16]
    outputs = {v["name"]: v["shape"] for v in manifest["graphs"]["decoder"]["outputs"]}
    assert outputs["logits"] == ["batch", 263] and "past_sequence" in outputs["present.1.k"][2]
    assert [v["shape"][0] for v in manifest["graphs"]["encoder"]["inputs"]] == ["tiles"]
    assert [e["name"] for e in manifest["state"][:2]] == ["conv_state", "ssm_state"]
    measured = [v for part in manifest["tolerances"]["measured"].values() for v in part.values()]
    assert max(measured) <= manifest["tolerances"]["stated"] == TOL
    assert set(manifest["files"]) >= {"decoder.onnx", "decoder.onnx.data", "embed_tokens.npy", "config.yaml",
                                      "encoder.onnx", "image_connector.onnx", "video_connector.onnx", "newline.npy"}
    assert not [p for p in root.iterdir() if p.name.startswith(".out.")]  # no temporary directory left


def test_generation_is_identical_to_pytorch(export, media):
    _, ckpt, out = export
    image, frames = media
    model, tokenizer, config = load_checkpoint(ckpt)
    torch_pipe = Pipeline(model.eval(), tokenizer, config)
    loaded = load_onnx(out)
    ort_pipe = loaded.pipeline()
    requests = [Request("What is shown?", images=[image]), Request("And here?", videos=[frames]),
                Request("Text only, and a longer prompt than the others")]
    torch_batch, _ = torch_pipe.prepare(requests)
    ort_batch, _ = ort_pipe.prepare(requests)
    assert torch.equal(torch_batch.mask, ort_batch.mask)
    torch.testing.assert_close(ort_batch.embeds, torch_batch.embeds, atol=TOL, rtol=0)
    generation = GenerationConfig(max_new_tokens=12)
    expected, _ = torch_pipe.answer(requests, generation)
    got, _ = ort_pipe.answer(requests, generation)  # the ONNX pipeline's default decoder is ORT's
    assert got.tokens == expected.tokens and got.texts == expected.texts


def test_chunked_prefill_and_steps_match_pytorch(export):
    _, ckpt, out = export
    lm = load_checkpoint(ckpt).model.lm.eval()
    decoder = load_onnx(out, prefill_chunk=7).decoder  # 30 tokens -> 5 graph calls carrying the state
    g = torch.Generator().manual_seed(1)
    embeds, mask = torch.randn(2, 30, 128, generator=g), torch.ones(2, 30, dtype=torch.bool)
    mask[1, :9] = False
    reference = TorchDecoder(lm)
    (want, want_state), (got, got_state) = reference.prefill(embeds, mask), decoder.prefill(embeds, mask)
    for _ in range(3):
        torch.testing.assert_close(got, want, atol=TOL * max(1.0, want.abs().max().item()), rtol=0)
        ids = want.argmax(-1, keepdim=True)
        (want, want_state), (got, got_state) = reference.step(ids, want_state), decoder.step(ids, got_state)


def test_hybrid_run_onnx_prints_what_pytorch_prints(export, media, capsys):
    _, ckpt, out = export
    args = ["--image", media[0], "--prompt", "What is shown?", "--max-new-tokens", "6"]
    assert cli_run.main(["--checkpoint", str(ckpt), *args]) == 0
    expected = capsys.readouterr().out
    assert cli_run.main(["--onnx", str(out), *args]) == 0
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize(("argv", "message"), [
    (["{ckpt}", "{out}"], "already exists: choose another directory or pass --force"),
    (["{ckpt}", "{root}/new", "--opset", "12"], "opset 12 is not supported: choose 18 to"),
    (["{empty}", "{root}/new"], "has no config.yaml: not a hybrid-mllm checkpoint"),
    (["--trt", "{ckpt}", "{root}/new", "--scan", "custom"], "--scan, --fp16 and --opset are for --onnx"),
])
def test_export_refuses_bad_input_in_one_line(export, tmp_path, capsys, argv, message):
    root, ckpt, out = export
    argv = [a.format(root=root, ckpt=ckpt, out=out, empty=tmp_path) for a in argv]
    assert run_cli(cli_export.main, argv if "--trt" in argv else ["--onnx", *argv]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress lines
    assert last.startswith("error: ") and message in last, last
    assert not (root / "new").exists()


def _damaged(tmp_path, out, damage):
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    damage(copy)
    return copy


def _edit_manifest(edit):
    def damage(directory):
        manifest = json.loads((directory / "manifest.json").read_text())
        edit(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))
    return damage


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "manifest.json").unlink(), r"manifest.json: missing, so .* is not a hybrid-export ONNX directory"),
    (lambda d: (d / "manifest.json").write_text("{not json"), r"manifest.json: not readable JSON"),
    (_edit_manifest(lambda m: m.update(format_version=99)), r"version 99, but this runtime reads .* version 1"),
    (lambda d: (d / "decoder.onnx.data").unlink(), r"decoder.onnx.data: missing \(listed in manifest.json\)"),
    (lambda d: (d / "embed_tokens.npy").write_bytes(b"x"), r"embed_tokens.npy: 1 bytes but manifest.json says"),
    (_edit_manifest(lambda m: m["graphs"]["decoder"]["inputs"][0].update(name="input_ids")),
     r"decoder.onnx: graph inputs .* do not match manifest.json's \['input_ids'"),
    (_edit_manifest(lambda m: m["embeddings"].update(file="../embed_tokens.npy")),
     r"path '\.\./embed_tokens.npy' leaves the export directory"),
    (_edit_manifest(lambda m: m["embeddings"].update(file="/etc/passwd")), r"absolute path '/etc/passwd'"),
    (_edit_manifest(lambda m: m["files"].update({"../secret": 1})), r"path '\.\./secret' leaves the export directory"),
])
def test_runtime_names_the_bad_file(export, tmp_path, damage, message):
    with pytest.raises(ManifestError, match=message):
        load_onnx(_damaged(tmp_path, export[2], damage))


def test_hybrid_run_onnx_passes_the_prefill_chunk_on(export, monkeypatch, capsys):
    import hybrid_mllm.runtime.onnx as onnx_package

    chunks = []

    def recording_load(out_dir, **options):
        loaded = load_onnx(out_dir, **options)
        chunks.append(loaded.decoder.prefill_chunk)
        return loaded

    monkeypatch.setattr(onnx_package, "load_onnx", recording_load)
    argv = ["--onnx", str(export[2]), "--prompt", "x", "--max-new-tokens", "2"]
    assert cli_run.main([*argv, "--prefill-chunk", "5"]) == 0 and cli_run.main(argv) == 0
    assert chunks == [5, 1024]  # given, then ONNX Runtime's default


def test_hybrid_run_onnx_error_is_one_line(export, tmp_path):
    broken = _damaged(tmp_path, export[2], lambda d: (d / "encoder.onnx").unlink())
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.runtime.cli_run", "--onnx", str(broken), "--prompt", "x"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "encoder.onnx: missing" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
