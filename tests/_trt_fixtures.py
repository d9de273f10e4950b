"""The tiny model the TensorRT tests share: a 2-layer hybrid, its decoder exported in the custom flavour."""

from pathlib import Path

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import save_checkpoint
from hybrid_mllm.core.config import load_config
from hybrid_mllm.export.onnx.decoder import export_decoder
from hybrid_mllm.export.onnx.exporter import DEFAULT_OPSETS

CONFIG = """
model:
  vocab_size: 263
  d_model: 32
  n_layer: 2
  layers: [mamba, attention]
  mixers:
    mamba: {d_state: 8, d_conv: 4, expand: 2}
    attention: {n_head: 2, n_kv_head: 1}
  mlp: {d_hidden: 64}
"""


def export_tiny(root: Path):
    """(checkpoint dir, lm, decoder.onnx path, graph description), the decoder exported in the
    custom flavour (no parity gate: fast)."""
    (root / "config.yaml").write_text(CONFIG)
    config = load_config(root / "config.yaml")
    model, tokenizer = build_mllm(config, seed=0)
    save_checkpoint(model, config, root / "ckpt", tokenizer=tokenizer)
    lm = model.lm.eval()
    graph = export_decoder(lm, root / "decoder.onnx", flavour="custom", opset=DEFAULT_OPSETS["custom"])
    return root / "ckpt", lm, root / "decoder.onnx", graph
