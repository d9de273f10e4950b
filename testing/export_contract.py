"""The export contract: a mixer exports to ONNX in each flavour and runs in ONNX Runtime like PyTorch.

`check_export` puts the mixer in a one-block model, exports its decoder graph the way
``hybrid-export`` does (the mixer's export declaration, if it registered one, decides what
it traces to) and runs the export's own parity gate on it: output and state shapes, values,
and the state carried from call to call (prefill, decode, prefill), at batch sizes and
lengths the exporter never saw. A mixer with a declaration must be registered (its package
installed, or ``set_registry(Registry.load(extra_plugins=(plugin_module,)))``).
Needs onnx, onnxscript, onnxruntime (and onnxruntime-extensions for custom nodes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from hybrid_mllm.core.exportable import custom_nodes
from hybrid_mllm.core.ffn import SwiGLU
from hybrid_mllm.core.model import Block, HybridLM
from hybrid_mllm.core.registry import get_registry

VOCAB = 32


def check_export(cls: type, d_model: int = 16, options: dict[str, Any] | None = None, *, flavour: str = "standard",
                 tol: float = 1e-4) -> dict[str, float]:
    """Export a one-block model of `cls` in `flavour` and check it in ONNX Runtime against
    PyTorch; returns the largest relative difference per parity chain."""
    from hybrid_mllm.export.onnx import ParityError, functions, parity
    from hybrid_mllm.export.onnx.decoder import export_decoder, state_layout
    from hybrid_mllm.export.onnx.exporter import DEFAULT_OPSETS

    torch.manual_seed(0)
    mixer = cls(d_model, **(options or {})).float()
    lm = HybridLM(VOCAB, d_model, [Block(d_model, mixer, SwiGLU(d_model, d_hidden=2 * d_model))]).eval()
    opset = DEFAULT_OPSETS[flavour]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decoder.onnx"
        export_decoder(lm, path, flavour=flavour, opset=opset)
        if flavour == "standard":
            nodes = custom_nodes(e.obj for e in get_registry().entries("export"))
            functions.attach_definitions(path, nodes, opset, torch.float32)
        try:
            session = parity.open_session(path, custom_ops=flavour == "custom")
            return parity.check_decoder(lm, session, state_layout(lm), tol=tol)
        except ParityError as e:
            raise AssertionError(f"{cls.__name__}, {flavour} flavour: {e}") from None
