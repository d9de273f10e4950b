"""The vision graphs: the encoder, and each connector with the same job as in `HybridMLLM.encode_pixels`.

``encoder.onnx``: ``pixels (N, 3, S, S) -> patches (N, gh, gw, C)``, ``prefix (N, P, C)``.
``image_connector.onnx`` / ``video_connector.onnx``: ``patches -> grid (N, gh', gw', d)`` and,
when the encoder keeps prefix tokens (P > 0), ``prefix -> prefix_tokens (N, P, d)`` (the
connector applied to each prefix token as a 1x1 grid, as in PyTorch).

Three graphs, not two encoder+connector pairs, so the encoder's weights are stored once;
N (tiles or frames) is dynamic. The splice (anyres unpad, newline and separator tokens)
is not a graph: the runtime runs the one splice (`hybrid_mllm.runtime.splice`) on the graphs'
outputs (`hybrid_mllm.runtime.onnx.OrtMLLM`), with the learned newline / separator embeddings saved as .npy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from hybrid_mllm.core.mllm import HybridMLLM

from .graph import dim_names, export_graph

TILES = "tiles"
EXAMPLE_TILES = 3


class EncoderGraph(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """pixels (N, 3, S, S) -> patches (N, gh, gw, C), prefix (N, P, C)."""
        out = self.encoder(pixels)
        return out.patches, out.prefix


class ConnectorGraph(nn.Module):
    def __init__(self, connector: nn.Module, with_prefix: bool):
        super().__init__()
        self.connector, self.with_prefix = connector, with_prefix

    def forward(self, patches: Tensor, *prefix: Tensor) -> tuple[Tensor, ...]:
        """patches (N, gh, gw, C)[, prefix (N, P, C)] -> grid (N, gh', gw', d)[, prefix tokens (N, P, d)]."""
        grid = self.connector(patches)
        if not self.with_prefix:
            return (grid,)
        return grid, self.connector(prefix[0][:, :, None, :])[:, :, 0]


def export_vision(model: HybridMLLM, out_dir: Path, *, opset: int, verbose: bool = False) -> dict:
    """Write encoder.onnx, image_connector.onnx and video_connector.onnx; returns their
    descriptions and the encoder facts a runtime needs (manifest ``vision`` section)."""
    encoder = model.encoder
    dtype = model.lm.embed.weight.dtype
    size = encoder.image_size
    pixels = torch.randn(EXAMPLE_TILES, 3, size, size).to(dtype)
    tiles = torch.export.Dim(TILES)
    graphs = {}
    export_graph(EncoderGraph(encoder), (pixels,), out_dir / "encoder.onnx", dynamic_shapes=({0: tiles},),
                 input_names=["pixels"], output_names=["patches", "prefix"], opset=opset, translations={},
                 verbose=verbose)
    graphs["encoder"] = {"file": "encoder.onnx", **dim_names(out_dir / "encoder.onnx")}
    with torch.no_grad():
        out = encoder(pixels)
    with_prefix = encoder.num_prefix_tokens > 0
    for key in ("image_connector", "video_connector"):
        connector = getattr(model, "connector" if key == "image_connector" else key)
        args = (out.patches, out.prefix) if with_prefix else (out.patches,)
        dims = ({0: tiles}, {0: tiles}) if with_prefix else ({0: tiles},)
        export_graph(ConnectorGraph(connector, with_prefix), args, out_dir / f"{key}.onnx", dynamic_shapes=dims,
                     input_names=["patches", "prefix"][:len(args)], output_names=["grid", "prefix_tokens"][:len(args)],
                     opset=opset, translations={}, verbose=verbose)
        graphs[key] = {"file": f"{key}.onnx", **dim_names(out_dir / f"{key}.onnx")}
    facts = {
        "image_size": size, "grid": list(encoder.grid), "out_dim": encoder.out_dim,
        "num_prefix_tokens": encoder.num_prefix_tokens, "mean": list(encoder.mean), "std": list(encoder.std),
        "image_grid": list(model.connector.out_grid(encoder.grid)),
        "video_grid": list(model.video_connector.out_grid(encoder.grid)),
    }
    return {"graphs": graphs, "encoder": facts}
