"""A decode step of the whole stack of blocks in one C call (`block_cpu.c`'s ``stack_step``).

Where every block's halves are ones the fused CPU steps take (Mamba-1 or attention mixers,
none; SwiGLU or MoE FFNs, none), the model's step runs them all in one call, each half's
output the next half's input. The argument structs are built once per model (`_StackPlan`,
from the halves' plans in `block_cpu`) and kept; a step sets only the input, the states'
pointers and the KV cache's (grown by `kv_cache.append`). That removes the per-block
dispatch: module calls, a ctypes call and the argument set-up per half. Any block it does
not take leaves the model on its per-block path, where each half may still run fused.

The full check (`stack_accepts` over every half, then the plan's signature) reads every module,
parameter pointer and setting of the model: ~0.3 ms a token on a 2-core machine, a fifth of a
small model's step. It runs at the start of each chain of steps (a state from a prefill, or any
state this plan did not return last); a step from the state the plan's previous step returned,
with an input of the same dtype and shape and the same thread count, reuses the plan unchecked.
So within a chain, weights updated in place are read live (but for the float32 copies the Mamba
step keeps of its small weights), and replaced modules, parameters or storages and changed
settings take effect from the next chain. The plan holds each weight's storage, so a storage
swapped mid-chain (``.data =``) is never read after it was freed (it is released when the plan
is rebuilt, at the next chain).
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import NamedTuple

import torch
from torch import Tensor

from hybrid_mllm.core.decode import BlockStep

from . import block_cpu, kv_cache, step_cpu
from .attention import Attention
from .mamba import Mamba
from .scan_cpu import KERNEL_DTYPES


class LayerArgs(ctypes.Structure):
    """Mirrors `LayerArgs` in block_cpu.c."""

    _fields_ = [("mixer", ctypes.c_int32), ("ffn", ctypes.c_int32), ("mixer_args", ctypes.c_void_p),
                ("ffn_args", ctypes.c_void_p)]


# mixer class -> (accepts, the C code of its half, its plans)
MIXERS = {Mamba: (block_cpu.mamba_accepts, 1, block_cpu.mamba_plans),
          Attention: (block_cpu.attention_accepts, 2, block_cpu.attention_plans)}


def stack_accepts(blocks, norm, x: Tensor, states) -> bool:
    """Every block's halves taken by a fused step, from a given state: the kept plan's chain
    continues, or the full check of every half passes (module docstring)."""
    if states is None:
        return False
    plan = _STACKS.get(blocks)
    if plan is not None and plan.continues(x, states):
        return True
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


NO_MIXER, MAMBA, ATTENTION = 0, 1, 2  # block_cpu.c's codes of a mixer half
FFN = 3  # a _Half's kind for an FFN half (LayerArgs.ffn is 1 then)
_STACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # list of blocks -> _StackPlan


def _signature(blocks) -> tuple:
    """What a stack plan is built from, per block: its halves' plans (current after
    `stack_accepts`), Mamba's step weights (rebuilt by the mixer when a parameter changes) and
    the residual multiplier. A plan whose signature differs is rebuilt."""
    signature = []
    for block in blocks:
        parts = block._modules
        mixer, ffn = (parts["mixer"] if parts.get("mixer_norm") is not None else None), parts.get("ffn")
        mixer_plan = None if mixer is None else MIXERS[type(mixer)][2].last(mixer)
        weights = mixer._step_weights() if type(mixer) is Mamba else None
        signature.append((mixer_plan, weights, None if ffn is None else block_cpu.ffn_plans.last(ffn),
                          block.residual_multiplier))
    return tuple(signature)


class _Chain(NamedTuple):
    """What a plan's last step returned and was given: the states tuple's id and one of its new
    tensors (alive only while that state may be stepped again), the input's dtype and shape,
    and whether the products ran on two threads."""

    states_id: int
    marker: weakref.ref
    dtype: torch.dtype
    shape: torch.Size
    threaded: bool


def _first_tensor(states) -> Tensor | None:
    return next((t for state in states for t in state), None)


class _Half:
    """One half's argument struct in a stack plan, and what its C code reads per step."""

    def __init__(self, kind: int, args, plan, step=None):
        self.kind, self.args, self.plan, self.step = kind, args, plan, step


class _StackPlan:
    """The argument structs of one model's stack step, kept between steps: weight pointers and
    settings from the halves' plans, each half's output in a buffer of the plan (the last one
    copied out), scratch shared by all halves (they run one after another). Per step only the
    input, the states' pointers and the KV cache's are set. A lock serialises steps of the
    same model from several threads (the structs and buffers are shared)."""

    def __init__(self, blocks, dtype: torch.dtype, signature: tuple):
        self.signature, self.dtype, self.lock = signature, dtype, threading.Lock()
        self.mixers, self.ffns = [], []
        for (mixer_plan, weights, ffn_plan, multiplier) in signature:
            half = None
            if weights is not None:  # a Mamba mixer
                step = step_cpu.StepArgs.from_buffer_copy(weights.args)
                step.dtype, step.xz_stride = KERNEL_DTYPES[dtype], 2 * mixer_plan.d_inner
                half = _Half(MAMBA, block_cpu.MambaPartArgs.from_buffer_copy(mixer_plan.args), mixer_plan, step)
            elif mixer_plan is not None:
                half = _Half(ATTENTION, block_cpu.AttentionPartArgs.from_buffer_copy(mixer_plan.args), mixer_plan)
            self.mixers.append(half)
            self.ffns.append(None if ffn_plan is None else
                             _Half(FFN, block_cpu.FFNArgs.from_buffer_copy(ffn_plan.args), ffn_plan))
            for h in (half, self.ffns[-1]):
                if h is not None:
                    h.args.r = multiplier
        self.halves = [h for pair in zip(self.mixers, self.ffns) for h in pair if h is not None]
        self.layers = (LayerArgs * len(signature))()
        for i, (m, f) in enumerate(zip(self.mixers, self.ffns)):
            self.layers[i].mixer = NO_MIXER if m is None else m.kind
            self.layers[i].mixer_args = None if m is None else ctypes.addressof(m.args)
            self.layers[i].ffn, self.layers[i].ffn_args = (0, None) if f is None else (1, ctypes.addressof(f.args))
        self.rows = self.positions = 0
        self.weights = [p.detach() for p in blocks.parameters()]  # their storages stay alive
        self.chain: _Chain | None = None

    def continues(self, x: Tensor, states) -> bool:
        """`states` is what this plan's last step returned, for an input like that step's."""
        c = self.chain
        return (c is not None and id(states) == c.states_id and x.dtype == c.dtype and x.shape == c.shape
                and x.device.type == "cpu" and (torch.get_num_threads() > 1) == c.threaded
                and (marker := c.marker()) is not None and _first_tensor(states) is marker)

    def _scratch_floats(self, rows: int, positions: int) -> int:
        need = 16
        for h in self.halves:
            if h.kind == MAMBA:
                s = h.step
                need = max(need, rows * (h.args.d + 2 * s.d_inner + s.d_inner + s.d_inner + s.dt_rank + 2 * s.d_state))
            elif h.kind == ATTENTION:
                need = max(need, h.plan.work_floats(rows, positions))
            else:
                need = max(need, h.plan.work_floats(rows))
        return need

    def _bind(self, x: Tensor, positions: int) -> None:
        """Buffers for `x`'s rows and up to `positions` cached positions; every half's pointers into them."""
        rows = x.shape[0]
        self.rows, self.positions = rows, max(positions, 2 * self.positions, 256)
        self.outputs = torch.empty(len(self.halves), *x.shape, dtype=x.dtype)
        self.scratch = torch.empty(self._scratch_floats(rows, self.positions))
        base, slot = self.scratch.data_ptr(), 4  # float32 slots, whatever the activations' dtype
        for j, h in enumerate(self.halves):
            a = h.args
            a.M, a.out = rows, self.outputs[j].data_ptr()
            a.x = self.outputs[j - 1].data_ptr() if j else 0  # the first half's: per step
            if h.kind == MAMBA:
                s, d_inner = h.step, h.step.d_inner
                a.h, a.xz = base, base + slot * rows * a.d
                a.y = a.xz + slot * rows * 2 * d_inner
                s.xz, s.y, s.work, s.batch = a.xz, a.y, a.y + slot * rows * d_inner, rows
                a.step = ctypes.addressof(s)
            else:
                a.work = base

    def run(self, x: Tensor, states) -> tuple[Tensor, tuple]:
        positions = max([s[0].shape[2] + 1 for s, m in zip(states, self.mixers, strict=True)
                         if m is not None and m.kind == ATTENTION], default=0)
        with self.lock:
            if x.shape[0] != self.rows or positions > self.positions:
                self._bind(x, positions)
            self.halves[0].args.x = x.data_ptr()
            new_states, alive = [], []
            for state, half in zip(states, self.mixers, strict=True):
                if half is None:
                    new_states.append(())
                elif half.kind == MAMBA:
                    new_states.append(_bind_mamba_state(half.step, state, alive))
                else:
                    new_states.append(_bind_kv_cache(half.args, state))
            lib = block_cpu._load_library()
            threads = torch.get_num_threads()
            lib.pool_set_threads(threads)
            lib.stack_step(self.layers, len(self.layers))
            new_states = tuple(new_states)
            marker = _first_tensor(new_states)
            self.chain = None if marker is None else _Chain(id(new_states), weakref.ref(marker), x.dtype, x.shape,
                                                            threads > 1)
            return self.outputs[-1].clone(), new_states


def _bind_mamba_state(step, state, alive: list) -> tuple:
    """Point the step at (conv_state, ssm_state) and at new tensors for the state after it."""
    conv_state, ssm_state = state[0].contiguous(), state[1].contiguous()
    new_conv, new_ssm = torch.empty_like(conv_state), torch.empty_like(ssm_state)
    step.conv_state, step.new_conv_state = conv_state.data_ptr(), new_conv.data_ptr()
    step.ssm_state, step.new_ssm_state = ssm_state.data_ptr(), new_ssm.data_ptr()
    alive.append((conv_state, ssm_state))
    return new_conv, new_ssm


def _bind_kv_cache(a, state) -> tuple:
    """Grow the KV cache by one position (`kv_cache.append`, as `block_cpu.attention_call`) and
    point the attention half at it; the C call writes the new k and v."""
    past_k, past_v, past_mask = state
    new = past_k.new_empty(past_k.shape[0], past_k.shape[1], 1, past_k.shape[3])
    k, v = kv_cache.append(past_k, new, 2), kv_cache.append(past_v, new, 2)
    kmask = kv_cache.append(past_mask, torch.ones(past_mask.shape[0], 1, dtype=torch.bool), 1)
    a.k_cache, a.v_cache, a.kmask, a.S = k.data_ptr(), v.data_ptr(), kmask.data_ptr(), k.shape[2]
    a.cache_b, a.cache_h, a.kmask_b = k.stride(0), k.stride(1), kmask.stride(0)
    return k, v, kmask


def stack_step(blocks, norm, x: Tensor, states, r) -> tuple[Tensor, tuple]:
    """x: (B, 1, d_model) embeddings, states: one per block -> the last block's output, the new
    states. Right after `stack_accepts`; at the start of a chain the plan is checked against the
    halves' plans (rebuilt if they changed)."""
    plan = _STACKS.get(blocks)
    if plan is None or not plan.continues(x, states):
        signature = _signature(blocks)
        if plan is None or plan.signature != signature or plan.dtype != x.dtype:
            plan = _STACKS[blocks] = _StackPlan(blocks, x.dtype, signature)
    return plan.run(x.contiguous(), states)


CPU_STACK = BlockStep(part="stack", fn=stack_step, accepts=stack_accepts,
                      description="every block of the model in one C call (the halves of block_cpu.c)")
