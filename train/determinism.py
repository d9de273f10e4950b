"""``train.deterministic: true``: the settings that make a run repeat bit for bit on a GPU.

On the CPU, training is already deterministic for a given config, seed and thread count
(data order comes from the seeded sampler and is loaded in the training process, with no
DataLoader workers). On CUDA, some kernels sum with atomics (embedding and index backward,
cuBLAS split-K reductions) and cuDNN may pick algorithms by timing; this turns all of that off.
"""

from __future__ import annotations

import os

import torch


def make_deterministic() -> None:
    """Deterministic kernels only (an op without one raises), fixed cuBLAS workspaces and no
    cuDNN autotuning. Must run before the first CUDA matmul for the cuBLAS setting to apply."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
