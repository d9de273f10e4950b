"""The errors a TensorRT engine raises for a user to fix (one line each), and the lazy import.

TensorRT is an optional extra: nothing in `hybrid_mllm.runtime.trt` or `hybrid_mllm.export.trt`
imports it at module import, so the CPU-only parts (shape logic, profiles, cache keys, the
Triton Inference Server repository) work without it, and a missing install is one line,
not a traceback.
"""

from __future__ import annotations

from hybrid_mllm.core.errors import HybridError

MIN_VERSION = (10, 9)  # tensorrt.plugin.aot_impl (engines that run without Python)
INSTALL_HINT = ("pip install 'hybrid-mllm[tensorrt]' on a Linux machine with an NVIDIA GPU "
                "(the tensorrt-cu12/-cu13 wheels fetch their libraries from NVIDIA's index, pypi.nvidia.com), "
                "or pip install --no-index --find-links DIR tensorrt from a local wheel directory")


class TensorRTUnavailableError(HybridError):
    """TensorRT (or a CUDA GPU it needs) is not available here."""


class EngineMismatchError(HybridError):
    """An engine built for another GPU, TensorRT version or graph."""


def import_tensorrt():
    """The `tensorrt` module, or `TensorRTUnavailableError` with the install hint."""
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailableError(f"TensorRT is not installed: {e}; {INSTALL_HINT}") from None
    if version_tuple(tensorrt.__version__) < MIN_VERSION:
        raise TensorRTUnavailableError(
            f"TensorRT {tensorrt.__version__} is too old: the plugins need >= {'.'.join(map(str, MIN_VERSION))} "
            f"(tensorrt.plugin.aot_impl); {INSTALL_HINT}")
    return tensorrt


def require_cuda() -> None:
    """A CUDA GPU visible to torch, or `TensorRTUnavailableError`."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("TensorRT needs an NVIDIA GPU, and torch sees no CUDA device here")


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35); non-numeric parts end the tuple."""
    parts = []
    for piece in version.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)
