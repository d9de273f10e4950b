"""A third-party mixer exports like the built-ins, through its own export declaration.

The example plugin (examples/plugins/hybrid-mllm-retention) declares, with the
``register_exports`` hook, that its retention is one ``retention::Retention`` node in the
custom flavour (run by ONNX Runtime on the CPU through the plugin's numpy implementation)
and plain ops in the standard one. A model with retention, Mamba and attention layers
exports in both flavours with ``export_onnx`` (whose parity gate runs), generates in ONNX
Runtime the tokens PyTorch generates, and nothing in export/ names the plugin.
"""

import sys
from pathlib import Path

import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from hybrid_mllm.core.build import build_mllm  # noqa: E402
from hybrid_mllm.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from hybrid_mllm.core.config import load_config  # noqa: E402
from hybrid_mllm.core.registry import Registry, set_registry  # noqa: E402
from hybrid_mllm.export.onnx import export_onnx  # noqa: E402
from hybrid_mllm.runtime.generate import GenerationConfig, TorchDecoder, generate  # noqa: E402
from hybrid_mllm.runtime.onnx import load_onnx  # noqa: E402
from hybrid_mllm.testing import check_export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugins" / "hybrid-mllm-retention"


@pytest.fixture(scope="module")
def plugin():
    """The example plugin's hooks in the process-wide registry (as its entry point would)."""
    sys.path.insert(0, str(PLUGIN))
    import hybrid_mllm_retention.plugin as module

    set_registry(Registry.load(autoload=False, extra_plugins=(module,)))
    yield module
    set_registry(None)
    sys.path.remove(str(PLUGIN))


@pytest.fixture(scope="module")
def checkpoint(plugin, tmp_path_factory):
    root = tmp_path_factory.mktemp("retention")
    config = load_config(PLUGIN / "retention-tiny.yaml")
    model, tokenizer = build_mllm(config, seed=0)
    return save_checkpoint(model.eval(), config, root / "ckpt", tokenizer=tokenizer)


@pytest.mark.parametrize("flavour", ["standard", "custom"])
def test_export_check_passes_for_the_plugin_mixer(plugin, flavour):
    from hybrid_mllm_retention import Retention

    measured = check_export(Retention, d_model=16, options={"n_head": 2}, flavour=flavour)
    assert max(measured.values()) < 1e-4


@pytest.mark.parametrize("flavour", ["standard", "custom"])
def test_model_with_the_plugin_exports_and_generates_like_pytorch(checkpoint, tmp_path, flavour):
    manifest = export_onnx(checkpoint, tmp_path / "out", flavour=flavour)
    nodes = {f"{n.domain}::{n.op_type}" for n in onnx.load(str(tmp_path / "out" / "decoder.onnx"),
                                                           load_external_data=False).graph.node}
    if flavour == "custom":
        assert manifest["custom_ops"]["ops"] == ["hybrid::CausalConv1d", "hybrid::SelectiveScan",
                                                 "retention::Retention"]
    else:
        assert "retention::Retention" not in nodes and manifest["custom_ops"] is None
    loaded = load_onnx(tmp_path / "out")
    lm = load_checkpoint(checkpoint).model.lm.eval()
    g = torch.Generator().manual_seed(0)
    embeds, mask = torch.randn(2, 23, 64, generator=g), torch.ones(2, 23, dtype=torch.bool)
    mask[0, :6] = False
    config = GenerationConfig(max_new_tokens=8)
    assert generate(loaded.decoder, embeds, mask, config).tokens == generate(TorchDecoder(lm), embeds, mask, config).tokens


def test_export_package_does_not_name_the_plugin():
    for path in (ROOT / "export").rglob("*.py"):
        assert "retention" not in path.read_text().lower(), f"{path.relative_to(ROOT)} names the plugin"
