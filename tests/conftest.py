"""Shared pytest setup.

Without a CUDA GPU, Triton kernels run in Triton's interpreter (on CPU tensors), so
their tests run everywhere. The variable must be set before Triton is first imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
