"""A decode step of the whole stack of blocks in one C call (`block_cpu.c`'s ``stack_step``).

Where every block's halves are ones the fused CPU steps take (Mamba-1 or attention mixers,
none; SwiGLU or MoE FFNs, none), the model's step runs them all in one call: the Python
side only sets up each half's arguments (`block_cpu`'s ``*_call``: new state tensors, the KV
cache's append) and chains each half's output to the next half's input. That removes the
per-block dispatch (the accepts, the module calls, one ctypes call per half). Any block it
does not take leaves the model on its per-block path, where each half may still run fused.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from hybrid_mllm.core.decode import BlockStep

from . import block_cpu
from .attention import Attention
from .mamba import Mamba


class LayerArgs(ctypes.Structure):
    """Mirrors `LayerArgs` in block_cpu.c."""

    _fields_ = [("mixer", ctypes.c_int32), ("ffn", ctypes.c_int32), ("mixer_args", ctypes.c_void_p),
                ("ffn_args", ctypes.c_void_p)]


# mixer class -> (accepts, call, the C code of its half)
MIXERS = {Mamba: (block_cpu.mamba_accepts, block_cpu.mamba_call, 1),
          Attention: (block_cpu.attention_accepts, block_cpu.attention_call, 2)}


def stack_accepts(blocks, norm, x: Tensor, states) -> bool:
    """Every block's halves taken by a fused step, from a given state."""
    if states is None:
        return False
    for block, state in zip(blocks, states, strict=True):
        parts = block._modules  # not attribute lookups: nn.Module's fall back to __getattr__
        mixer_norm, ffn = parts.get("mixer_norm"), parts.get("ffn")
        if mixer_norm is not None:
            mixer = parts["mixer"]
            entry = MIXERS.get(type(mixer))
            if entry is None or not entry[0](mixer, mixer_norm, x, state):
                return False
        if ffn is not None and not block_cpu.ffn_accepts(ffn, parts["ffn_norm"], x, ()):
            return False
    return True


def stack_step(blocks, norm, x: Tensor, states, r) -> tuple[Tensor, tuple]:
    """x: (B, 1, d_model) embeddings, states: one per block -> the last block's output, the new states."""
    x = x.contiguous()
    outputs = torch.empty(2 * len(blocks), *x.shape, dtype=x.dtype)  # each half's output
    layers, alive, new_states = (LayerArgs * len(blocks))(), [], []
    for i, (block, state) in enumerate(zip(blocks, states, strict=True)):
        parts, multiplier = block._modules, block.residual_multiplier
        if parts.get("mixer_norm") is not None:
            mixer = parts["mixer"]
            _, call, code = MIXERS[type(mixer)]
            out = outputs[2 * i]
            args, state, keep = call(mixer, x, out, state, multiplier)
            layers[i].mixer, layers[i].mixer_args, x = code, ctypes.addressof(args), out
            alive.append((args, keep))
        else:
            state = ()
        if parts.get("ffn") is not None:
            out = outputs[2 * i + 1]
            args, keep = block_cpu.ffn_call(parts["ffn"], x, out, multiplier)
            layers[i].ffn, layers[i].ffn_args, x = 1, ctypes.addressof(args), out
            alive.append((args, keep))
        new_states.append(state)
    block_cpu._load_library().stack_step(layers, len(blocks))
    return x, tuple(new_states)


CPU_STACK = BlockStep(part="stack", fn=stack_step, accepts=stack_accepts,
                      description="every block of the model in one C call (the halves of block_cpu.c)")
