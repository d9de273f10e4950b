"""The parity gate catches broken exports, and the custom flavour's graph (hybrid:: nodes).

A tiny text-only hybrid (Mamba, attention with MoE) keeps each export to seconds. The custom
flavour's nodes run in ONNX Runtime as onnxruntime-extensions Python ops (`cpu_ops`).
"""

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from hybrid_mllm.core.build import build_mllm  # noqa: E402
from hybrid_mllm.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from hybrid_mllm.core.config import load_config  # noqa: E402
from hybrid_mllm.export.onnx import ParityError, export_onnx, parity  # noqa: E402
from hybrid_mllm.export.onnx.decoder import state_layout  # noqa: E402
from hybrid_mllm.runtime.generate import GenerationConfig, TorchDecoder, generate  # noqa: E402
from hybrid_mllm.runtime.onnx import load_onnx  # noqa: E402
from hybrid_mllm.runtime.onnx.sessions import make_session  # noqa: E402

CONFIG = """
model:
  vocab_size: 263
  d_model: 64
  n_layer: 2
  layers: [mamba, attention]
  ffn_layers: [mlp, moe]
  mixers:
    mamba: {d_state: 8, d_conv: 4, expand: 2}
    attention: {n_head: 4, n_kv_head: 2}
  mlp: {d_hidden: 128}
  moe: {n_experts: 4, top_k: 2, d_hidden: 64}
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    (root / "config.yaml").write_text(CONFIG)
    config = load_config(root / "config.yaml")
    model, tokenizer = build_mllm(config, seed=0)
    save_checkpoint(model, config, root / "ckpt", tokenizer=tokenizer)
    return root / "ckpt"


@pytest.fixture(scope="module")
def custom_export(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("custom") / "out"
    export_onnx(checkpoint, out, flavour="custom")  # the gate ran the hybrid:: nodes as cpu_ops
    return out


def test_custom_flavour_has_one_node_per_scan_and_conv(custom_export):
    model = onnx.load(str(custom_export / "decoder.onnx"), load_external_data=False)
    custom = [n for n in model.graph.node if n.domain == "hybrid"]
    assert sorted(n.op_type for n in custom) == ["CausalConv1d", "SelectiveScan"]  # one Mamba layer
    scan = next(n for n in custom if n.op_type == "SelectiveScan")
    assert len(scan.input) == 9 and len(scan.output) == 2 and [a.name for a in scan.attribute] == ["softplus"]
    assert not model.functions  # no standard-op definition: a plugin provides it
    assert {(o.domain, o.version) for o in model.opset_import} >= {("hybrid", 1)}


def test_custom_flavour_generates_like_pytorch(checkpoint, custom_export):
    lm = load_checkpoint(checkpoint).model.lm.eval()
    loaded = load_onnx(custom_export)
    assert loaded.manifest["custom_ops"] == {"domains": ["hybrid"], "ops": ["hybrid::CausalConv1d", "hybrid::SelectiveScan"]}
    g = torch.Generator().manual_seed(0)
    embeds, mask = torch.randn(2, 9, 64, generator=g), torch.ones(2, 9, dtype=torch.bool)
    mask[0, :4] = False
    config = GenerationConfig(max_new_tokens=8)
    expected = generate(TorchDecoder(lm), embeds, mask, config)
    assert generate(loaded.decoder, embeds, mask, config).tokens == expected.tokens


class _ForgetsState:
    """A session that drops the incoming state, as a graph that ignores it would."""

    def __init__(self, session):
        self.session = session

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, names, feed):
        fresh = {k: (np.zeros_like(v) if k.startswith("past.") and "kmask" not in k else v) for k, v in feed.items()}
        return self.session.run(names, fresh)


def test_gate_catches_a_graph_that_ignores_incoming_state(checkpoint, custom_export):
    lm = load_checkpoint(checkpoint).model.lm.eval()
    session = make_session(custom_export / "decoder.onnx", custom_ops=True)
    assert max(parity.check_decoder(lm, session, state_layout(lm), tol=1e-4).values()) < 1e-4
    with pytest.raises(ParityError, match=r"prefill-decode-prefill call 2: batch 2, length 1, 37 cached positions"):
        parity.check_decoder(lm, _ForgetsState(session), state_layout(lm), tol=1e-4)


def test_a_silently_specialised_axis_fails_the_export_and_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    """The decoder traced without dynamic axes (the exporters' specialisation trap: every axis
    fixed to the example's size) must fail the gate, which runs other lengths and batch
    sizes, and the export must leave no directory and no temporary files behind."""
    from hybrid_mllm.export.onnx import decoder

    export_graph = decoder.export_graph
    monkeypatch.setattr(decoder, "export_graph",
                        lambda *args, **kwargs: export_graph(*args, **{**kwargs, "dynamic_shapes": None}))
    with pytest.raises(ParityError, match=r"ONNX Runtime failed on the decoder, prefill-decode-prefill call 1: "
                                          r"batch 2, length 37, 0 cached positions: .*invalid dimensions"):
        export_onnx(checkpoint, tmp_path / "out", flavour="custom")
    assert list(tmp_path.iterdir()) == []
