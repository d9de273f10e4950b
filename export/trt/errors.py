"""The errors an engine build raises for a user to fix (one line each)."""

from __future__ import annotations

from hybrid_mllm.core.errors import HybridError


class EngineBuildError(HybridError):
    """TensorRT could not parse the graph or build the engine as asked."""


class TrtParityError(HybridError):
    """The engine disagrees with PyTorch beyond the stated tolerance."""
