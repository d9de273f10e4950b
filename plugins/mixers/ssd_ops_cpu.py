"""The SSD node on ONNX Runtime's CPU provider (the custom flavour without TensorRT).

onnxruntime-extensions calls `ssd_scan` for the graph's ``SSDScan`` nodes, numpy arrays in
and out (shapes in `ssd_ops_torch`). It runs the project's SSD dispatch (``auto``: the fastest
CPU kernel registered) on tensors sharing the arrays' memory.
"""

from __future__ import annotations

import numpy as np
import torch

from hybrid_mllm.core.ssd import ssd_scan as dispatch


def ssd_scan(x, dt, A, B, C, D, state):
    """``hybrid::SSDScan``: x (b, L, H, P), dt (b, L, H), A, D (H,), B, C (b, L, G, N), state (b, H, P, N)
    -> y (b, L, H, P) in x's dtype, new_state (b, H, P, N) float32."""
    with torch.no_grad():
        y, h = dispatch(*(_tensor(a) for a in (x, dt, A, B, C, D, state)))
    return y.contiguous().numpy(), h.contiguous().numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory (read-only arrays are copied: torch needs writable memory)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())
