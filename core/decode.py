"""The switch between the one-token decode paths and the general forward.

Mixers and FFNs may take a path built for decoding (one token, no padding mask, no
gradients: Mamba's fused C step, attention's in-place KV cache, MoE's direct expert loop).
Each is tested against the general path, which stays reachable for comparison:
``HYBRID_MLLM_DECODE=generic`` in the environment, or `decode_paths(fast=False)` in code
(benchmarks time both in one process).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .errors import HybridError

DECODE_ENV = "HYBRID_MLLM_DECODE"
_CHOICES = ("fast", "generic")


def _from_env() -> bool:
    value = os.environ.get(DECODE_ENV, "fast")
    if value not in _CHOICES:
        raise HybridError(f"${DECODE_ENV}={value!r}: expected one of {', '.join(_CHOICES)}")
    return value == "fast"


_fast = _from_env()


def fast_decode() -> bool:
    """True when the one-token paths are on and the call is not traced for export or compiled
    or recording gradients (those take the general forward)."""
    return (_fast and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting() and not torch.jit.is_tracing())


@contextlib.contextmanager
def decode_paths(*, fast: bool) -> Iterator[None]:
    """Turn the one-token paths on or off inside the block (not thread-local: for benchmarks and tests)."""
    global _fast
    saved, _fast = _fast, fast
    try:
        yield
    finally:
        _fast = saved
