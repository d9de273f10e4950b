"""The errors an ONNX export or runtime raises for a user to fix (one line each)."""

from __future__ import annotations

from hybrid_mllm.core.errors import HybridError


class ExportError(HybridError):
    """An export that cannot be done as asked (bad checkpoint, output directory, opset, flavour)."""


class ParityError(ExportError):
    """The exported graphs disagree with PyTorch beyond the stated tolerance."""


class ManifestError(HybridError):
    """An export directory whose manifest or files are missing or do not match."""


class RuntimeUnavailableError(HybridError):
    """ONNX Runtime, an execution provider or the custom-op reference library is not installed."""


def first_line(error: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message (exporters and ONNX Runtime write pages)."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
