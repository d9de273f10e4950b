"""A `HybridLM`'s whole decode step in one C call (`block_cpu.c`'s ``model_step``).

`stack_cpu` runs every block in one call; around it a step still ran the embedding lookup,
the final norm and the LM head as torch ops, each slow right after the call has streamed the
weights through the caches (their dispatch code and data are evicted): 0.15-0.26 ms of a
1.2-1.6 ms bf16 step of the small Jamba (time stamps inside real steps). Here the call starts from the token ids and ends
with the logits: ``head(norm(stack(embed[ids] * embedding_multiplier))) * logits_multiplier``,
each rounded to the model's dtype where the eager forward rounds it.

It takes a model whose blocks `stack_cpu` takes, whose ends are exactly `ScaledEmbedding`
(no ``max_norm``), `RMSNorm` and a bias-free ``nn.Linear`` in the blocks' dtype, stepping
int64 ids (B, 1). As for the stack, the ends are checked at the start of each chain of steps:
within a chain, in-place updates of their weights are read live, replaced ones apply from
the next chain. An id outside the embedding raises IndexError before anything is computed.
"""

from __future__ import annotations

import ctypes
import weakref

import torch
from torch import Tensor, nn

from hybrid_mllm.core.decode import BlockStep
from hybrid_mllm.core.model import HybridLM, ScaledEmbedding
from hybrid_mllm.core.norm import RMSNorm

from . import block_cpu, stack_cpu
from .scan_cpu import KERNEL_DTYPES

_VOIDP = ctypes.c_void_p


class ModelArgs(ctypes.Structure):
    """Mirrors `ModelArgs` in block_cpu.c."""

    _fields_ = [(name, _VOIDP) for name in ("ids", "embed", "x", "layers", "last", "norm_w", "h", "head",
                                              "logits")] + [
        (name, ctypes.c_int64) for name in ("n_layers", "M", "d", "n_embed", "vocab")] + [
        (name, ctypes.c_float) for name in ("embed_scale", "eps", "logits_scale")] + [("dtype", ctypes.c_int32)]


def _ends(lm: HybridLM) -> tuple[Tensor, Tensor, Tensor] | None:
    """The embedding table, final norm weight and head weight, when the modules are ones the C step computes."""
    parts = lm._modules
    embed, norm, head = parts.get("embed"), parts.get("norm"), parts.get("lm_head")
    if type(embed) is not ScaledEmbedding or embed.max_norm is not None or type(norm) is not RMSNorm:
        return None
    if type(head) is not nn.Linear or head.bias is not None:
        return None
    return embed.weight, norm.weight, head.weight


def _ends_signature(lm: HybridLM, dtype: torch.dtype) -> tuple | None:
    """What the ends' struct is built from (None: the ends are not taken at `dtype`)."""
    ends = _ends(lm)
    if ends is None or not block_cpu._takes_weights(ends, dtype):
        return None
    table, norm_w, head_w = ends
    d = table.shape[1]
    if norm_w.shape != (d,) or head_w.dim() != 2 or head_w.shape[1] != d:
        return None
    return (dtype, *(t.data_ptr() for t in ends), tuple(table.shape), head_w.shape[0], float(lm.embed.multiplier),
            float(lm.norm.eps), float(lm.logits_multiplier))


class _EndsPlan:
    """The `ModelArgs` of one model, kept between steps: weight pointers and scales, the
    embeddings' and the normed output's buffers (sized per row count). Per step only the ids,
    the logits and the stack's pointers are set (under the stack plan's lock)."""

    def __init__(self, lm: HybridLM, dtype: torch.dtype, signature: tuple):
        self.signature, self.dtype = signature, dtype
        table, norm_w, head_w = self.weights = tuple(t.detach() for t in _ends(lm))  # their storages stay alive
        self.args = a = ModelArgs()
        a.embed, a.norm_w, a.head = table.data_ptr(), norm_w.data_ptr(), head_w.data_ptr()
        a.d, a.n_embed, a.vocab, a.dtype = table.shape[1], table.shape[0], head_w.shape[0], KERNEL_DTYPES[dtype]
        a.embed_scale, a.eps, a.logits_scale = signature[-3:]
        self.rows = 0

    def shape(self, ids: Tensor) -> torch.Size:
        """The embeddings' (B, 1, d) for ids (B, 1)."""
        return torch.Size((ids.shape[0], 1, self.args.d))

    def bind(self, rows: int) -> None:
        """Buffers for `rows` rows: the embeddings (the stack's input) and the normed output."""
        if rows != self.rows:
            self.rows, self.x, self.h = rows, *torch.empty(2, rows, self.args.d, dtype=self.dtype)
            self.args.M, self.args.x, self.args.h = rows, self.x.data_ptr(), self.h.data_ptr()


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HybridLM -> _EndsPlan


def _takes_ids(ids: Tensor) -> bool:
    return ids.dtype == torch.int64 and ids.device.type == "cpu" and ids.dim() == 2 and ids.shape[1] == 1


def model_accepts(lm, norm, ids: Tensor, states) -> bool:
    """A `HybridLM` (exactly) stepping int64 ids (B, 1) from `states`: the kept plans' chain
    continues, or the ends and every block's halves are taken (the full check)."""
    if type(lm) is not HybridLM or states is None or not _takes_ids(ids):
        return False
    ends = _PLANS.get(lm)
    if ends is not None and stack_cpu.chain_continues(lm.blocks, ends.dtype, ends.shape(ids), states):
        return True
    table = lm.embed.weight
    if _ends_signature(lm, table.dtype) is None:
        return False
    x = table.new_empty(ids.shape[0], 1, table.shape[1])  # what the stack's checks read: dtype, shape, device
    return stack_cpu.stack_accepts(lm.blocks, None, x, states)


def model_step(lm: HybridLM, norm, ids: Tensor, states, r) -> tuple[Tensor, tuple]:
    """ids: (B, 1) int64, states: one per block -> logits (B, 1, vocab) in the model's dtype,
    the new states. Right after `model_accepts`."""
    ends, plan = _PLANS.get(lm), stack_cpu._STACKS.get(lm.blocks)
    if ends is None or plan is None or not plan.continues(ends.dtype, ends.shape(ids), states):
        dtype = lm.embed.weight.dtype  # a chain's start: the ends checked, the stack's plan too
        signature = _ends_signature(lm, dtype)
        if ends is None or ends.signature != signature:
            ends = _PLANS[lm] = _EndsPlan(lm, dtype, signature)
        plan = stack_cpu.plan_for(lm.blocks, dtype, ends.shape(ids), states)
    dtype, shape = ends.dtype, ends.shape(ids)
    with plan.lock:
        alive = []
        new_states = plan.bind_step(shape, states, alive)
        ends.bind(shape[0])
        a = ends.args
        plan.halves[0].args.x = a.x
        a.layers, a.n_layers, a.last = ctypes.addressof(plan.layers), len(plan.layers), plan.outputs[-1].data_ptr()
        logits = torch.empty(shape[0], 1, a.vocab, dtype=dtype)
        ids = ids if ids.is_contiguous() else ids.contiguous()  # a column of a longer batch: (B, 1) strided
        a.ids, a.logits = ids.data_ptr(), logits.data_ptr()
        bad = block_cpu._load_library().model_step(ctypes.byref(a))
        if bad >= 0:
            raise IndexError(f"token id {int(ids[bad, 0])} is out of range: the embedding has {a.n_embed} rows")
        return logits, plan.chained(new_states, dtype, shape)


CPU_MODEL = BlockStep(part="model", fn=model_step, accepts=model_accepts,
                      description="the embedding, every block (stack_cpu), the final norm and the LM head in one "
                                  "C call")
