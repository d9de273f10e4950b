"""The switch between the one-token decode paths and the general forward.

Mixers and FFNs may take a path built for decoding (one token, no padding mask, no
gradients: Mamba's fused C step, attention's in-place KV cache, MoE's direct expert loop),
and their linear layers `linear`, which hands a few rows to a registered linear kernel
(``register_linear_kernels``: the built-in float32 / bfloat16 CPU one) that accepts them
(and, on CPUs without bfloat16 instructions, bfloat16 products of any size to one that
computes them in float32). A
`Block` may run either half whole through a registered `BlockStep` (``register_block_steps``:
the built-in CPU ones fuse norm, Mamba / attention / FFN and residual into one C call), and
`HybridLM` all its blocks at once (a "stack" step: one C call per token), or its whole step
from the token ids to the logits (a "model" step).
Each is tested against the general path, which stays reachable for comparison:
``HYBRID_MLLM_DECODE=generic`` in the environment, or `decode_paths(fast=False)` in code
(benchmarks time both in one process).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import HybridError

DECODE_ENV = "HYBRID_MLLM_DECODE"
_CHOICES = ("fast", "generic")


def _from_env() -> bool:
    value = os.environ.get(DECODE_ENV, "fast")
    if value not in _CHOICES:
        raise HybridError(f"${DECODE_ENV}={value!r}: expected one of {', '.join(_CHOICES)}")
    return value == "fast"


_fast = _from_env()
_blocks = True  # the fused block steps, when fast (off only to time the fast path without them)


def fast_decode() -> bool:
    """True when the one-token paths are on and the call is not traced for export or compiled
    or recording gradients (those take the general forward)."""
    return (_fast and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting() and not torch.jit.is_tracing())


@contextlib.contextmanager
def decode_paths(*, fast: bool, blocks: bool = True) -> Iterator[None]:
    """Turn the one-token paths on or off inside the block, the fused block steps with `blocks`
    (not thread-local: for benchmarks and tests)."""
    global _fast, _blocks
    saved, _fast, _blocks = (_fast, _blocks), fast, blocks
    try:
        yield
    finally:
        _fast, _blocks = saved


@dataclass(frozen=True)
class LinearKernel:
    """A fast ``F.linear`` for some inputs: ``fn(x, weight, bias) -> y`` with F.linear's shapes,
    used when ``accepts(x, weight, bias)`` (dtype, device, few rows, kernel built)."""

    fn: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    accepts: Callable[[Tensor, Tensor, Tensor | None], bool]
    description: str = ""


@functools.cache
def _linear_kernels() -> tuple[LinearKernel, ...]:
    from .registry import get_registry  # the registry loads this module's importers: import late

    return tuple(entry.obj for entry in get_registry().entries("linear_kernel"))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; without gradients (`fast_decode`), through the first
    registered kernel that accepts the inputs. x: (..., K), weight: (N, K), bias: (N,) -> (..., N)."""
    if fast_decode():
        for kernel in _linear_kernels():
            if kernel.accepts(x, weight, bias):
                return kernel.fn(x, weight, bias)
    return F.linear(x, weight, bias)


@dataclass(frozen=True)
class BlockStep:
    """One half of a `Block` fused for a decode step: ``x + r * part(norm(x))`` with ``part``
    the block's mixer (``part == "mixer"``) or its FFN (``"ffn"``); or all blocks (``"stack"``);
    or a whole `HybridLM` step (``"model"``).

    ``fn(module, norm, x, state, r) -> (x_out, new_state)``, x: (B, 1, d_model), r the block's
    residual multiplier, state the mixer's (``()`` for an FFN, whose aux loss is 0 here: no
    gradients); called right after ``accepts(module, norm, x, state)`` returned True. For
    ``"stack"``, module is the model's list of blocks, state the model's (one per block), x
    the embeddings and x_out the last block's output; norm and r are None. For ``"model"``,
    module is the `HybridLM`, x its input ids (B, 1) and x_out the logits (B, 1, vocab), state
    as for ``"stack"``; norm and r are None.
    """

    part: str
    fn: Callable
    accepts: Callable[..., bool]
    description: str = ""


@functools.cache
def _block_steps(part: str) -> tuple[BlockStep, ...]:
    from .registry import get_registry

    return tuple(e.obj for e in get_registry().entries("block_step") if e.obj.part == part)


def block_step(part: str, module, norm, x: Tensor, state, mask: Tensor | None) -> BlockStep | None:
    """The first registered `BlockStep` of `part` that accepts one decoded token without a
    padding mask, else None (the block runs its modules)."""
    if mask is not None or x.shape[1] != 1 or not _blocks or not fast_decode():
        return None
    for step in _block_steps(part):
        if step.accepts(module, norm, x, state):
            return step
    return None


def dense(layer: torch.nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` through `linear`."""
    return linear(x, layer.weight, layer.bias)
