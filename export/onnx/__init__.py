"""ONNX export (``hybrid-export --onnx``): a checkpoint -> an export directory, checked against PyTorch.

The directory's format is `hybrid_mllm.runtime.onnx` (which runs it). Modules: `paths` (the
model switched to each component's declared export path), `graph` (one module -> one ONNX
file), `functions` (standard-op definitions of custom nodes), `decoder` and `vision` (the
graphs), `parity` (the gate), `exporter` (`export_onnx`).
"""

from .errors import ExportError, ParityError
from .exporter import DEFAULT_OPSETS, export_onnx, supported_opsets

__all__ = ["DEFAULT_OPSETS", "ExportError", "ParityError", "export_onnx", "supported_opsets"]
