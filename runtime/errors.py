"""The errors a runtime raises for a user to fix (one line each)."""

from __future__ import annotations

from hybrid_mllm.core.errors import HybridError


class ManifestError(HybridError):
    """An export directory whose manifest or files are missing or do not match."""


class RuntimeUnavailableError(HybridError):
    """ONNX Runtime, an execution provider or the custom-op reference library is not installed."""
