"""The errors an ONNX export raises for a user to fix (one line each)."""

from __future__ import annotations

from hybrid_mllm.core.errors import HybridError


class ExportError(HybridError):
    """An export that cannot be done as asked (bad checkpoint, output directory, opset, flavour)."""


class ParityError(ExportError):
    """The exported graphs disagree with PyTorch beyond the stated tolerance."""


def first_line(error: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message (exporters and ONNX Runtime write pages)."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
