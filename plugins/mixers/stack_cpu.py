"""A decode step of the whole stack of blocks in one C call (`block_cpu.c`'s ``stack_step``).

Where every block's halves are ones the fused CPU steps take (Mamba-1 or attention mixers,
none; SwiGLU or MoE FFNs, none), the model's step runs them all in one call, each half's
output the next half's input. The argument structs are built once per model (`_StackPlan`,
from the halves' plans in `block_cpu`) and kept; a step sets only the input, the states'
pointers and the KV cache's (grown by `kv_cache.extend`). That removes the per-block
dispatch: module calls, a ctypes call and the argument set-up per half. Any block it does
not take leaves the model on its per-block path, where each half may still run fused.
`model_cpu` runs the same plan inside a whole model step (embedding and head too).

Each torch op a step runs outside the call is slow: the call has just streamed the weights
through the caches, evicting the op's dispatch code and data (measured on a 2-core AMD EPYC:
the final norm 21 us in a loop of its own, 74-126 us right after the call; the embedding 7
vs 32-58 us). So per step the Mamba layers' new states are two allocations for all layers, and
within a chain (below) their old ones are not read at all: they are where the last step wrote.

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
import math
import threading
import weakref
from typing import NamedTuple

import torch
from torch import Tensor

from hybrid_mllm.core.decode import BlockStep

from . import block_cpu, step_cpu
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
    if states is None or x.device.type != "cpu":
        return False
    return chain_continues(blocks, x.dtype, x.shape, states) or halves_accept(blocks, x, states)


def chain_continues(blocks, dtype: torch.dtype, shape: torch.Size, states) -> bool:
    """`states` is what the kept plan of `blocks` returned last, for inputs of that dtype and shape."""
    plan = _STACKS.get(blocks)
    return plan is not None and plan.continues(dtype, shape, states)


def halves_accept(blocks, x: Tensor, states) -> bool:
    """The full check: each block's halves taken by its fused step, for inputs like `x` from
    `states` (and one half at least)."""
    halves = 0
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
        halves += (mixer_norm is not None) + (ffn is not None)
    return halves > 0


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
        self.mamba_layers = [i for i, m in enumerate(self.mixers) if m is not None and m.kind == MAMBA]
        self.attention_layers = [i for i, m in enumerate(self.mixers) if m is not None and m.kind == ATTENTION]
        self.rows = self.positions = 0
        self.weights = [p.detach() for p in blocks.parameters()]  # their storages stay alive
        self.chain: _Chain | None = None

    def continues(self, dtype: torch.dtype, shape: torch.Size, states) -> bool:
        """`states` is what this plan's last step returned, for an input like that step's."""
        c = self.chain
        return (c is not None and id(states) == c.states_id and dtype == c.dtype and shape == c.shape
                and (torch.get_num_threads() > 1) == c.threaded
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

    def _bind(self, shape: torch.Size, positions: int) -> None:
        """Buffers for `shape`'s rows and up to `positions` cached positions; every half's pointers into them."""
        rows = shape[0]
        self.rows, self.positions = rows, max(positions, 2 * self.positions, 256)
        self.outputs = torch.empty(len(self.halves), *shape, dtype=self.dtype)
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

    def bind_step(self, shape: torch.Size, states, alive: list) -> tuple:
        """Before a step of inputs of `shape` (B, 1, d) from `states`: buffers sized, the
        products' thread count set, every half pointed at its state and at the new state it
        writes (returned). Where `states` is what the last step returned (`continues`, checked
        here, under `lock`: another thread may have stepped since), the Mamba halves read their
        states where that step wrote them; else from `states` (their contiguous copies go into
        `alive`). The chain ends here and starts again at `chained`, after the call: a step
        that fails in between leaves none. The first half's input is the caller's to set."""
        continuing, self.chain = self.continues(self.dtype, shape, states), None
        positions = max([states[i][0].shape[2] + 1 for i in self.attention_layers], default=0)
        if shape[0] != self.rows or positions > self.positions:
            self._bind(shape, positions)
        block_cpu._load_library().pool_set_threads(torch.get_num_threads())
        mamba = self.mamba_layers
        if continuing:
            for i in mamba:
                step = self.mixers[i].step
                step.conv_state, step.ssm_state = step.new_conv_state, step.new_ssm_state
        else:
            self.mamba_states = _MambaStates([states[i] for i in mamba])
            for i in mamba:
                conv, ssm = (t if t.is_contiguous() else t.contiguous() for t in states[i])
                step = self.mixers[i].step
                step.conv_state, step.ssm_state = conv.data_ptr(), ssm.data_ptr()
                alive.append((conv, ssm))
        new_states = [()] * len(self.mixers)
        for i, (conv, ssm, conv_ptr, ssm_ptr) in zip(mamba, self.mamba_states.new(), strict=True):
            step = self.mixers[i].step
            step.new_conv_state, step.new_ssm_state = conv_ptr, ssm_ptr
            new_states[i] = (conv, ssm)
        for i in self.attention_layers:
            new_states[i] = _bind_kv_cache(self.mixers[i].args, states[i])
        return tuple(new_states)

    def chained(self, new_states: tuple, dtype: torch.dtype, shape: torch.Size) -> tuple:
        """After a step that returned `new_states`: the next step from them continues the chain."""
        marker = _first_tensor(new_states)
        self.chain = None if marker is None else _Chain(id(new_states), weakref.ref(marker), dtype, shape,
                                                        torch.get_num_threads() > 1)
        return new_states

    def run(self, x: Tensor, states) -> tuple[Tensor, tuple]:
        """x: (B, 1, d) contiguous embeddings -> the last block's output (B, 1, d), the new states."""
        with self.lock:
            alive = []
            new_states = self.bind_step(x.shape, states, alive)
            self.halves[0].args.x = x.data_ptr()
            block_cpu._load_library().stack_step(self.layers, len(self.layers))
            return self.outputs[-1].clone(), self.chained(new_states, x.dtype, x.shape)


class _MambaStates:
    """The Mamba layers' (conv_state, ssm_state) shapes and dtypes, read at a chain's start;
    `new` allocates the pairs a step writes: two tensors for all the layers when the shapes
    agree (the usual case, their pointers found by arithmetic), else one per state."""

    def __init__(self, states: list):
        self.pairs = [((c.shape, c.dtype), (s.shape, s.dtype)) for c, s in states]
        self.stacked = len(set(self.pairs)) == 1
        if self.stacked:
            (c, cd), (s, sd) = self.pairs[0]
            self.conv_bytes, self.ssm_bytes = math.prod(c) * cd.itemsize, math.prod(s) * sd.itemsize

    def new(self) -> list[tuple[Tensor, Tensor, int, int]]:
        """-> per layer (conv_state, ssm_state, their data pointers), unwritten."""
        if not self.stacked:
            pairs = [(torch.empty(c, dtype=cd), torch.empty(s, dtype=sd)) for (c, cd), (s, sd) in self.pairs]
            return [(c, s, c.data_ptr(), s.data_ptr()) for c, s in pairs]
        n, ((c, cd), (s, sd)) = len(self.pairs), self.pairs[0]
        conv, ssm = torch.empty((n, *c), dtype=cd), torch.empty((n, *s), dtype=sd)
        c0, s0 = conv.data_ptr(), ssm.data_ptr()
        return [(conv_i, ssm_i, c0 + i * self.conv_bytes, s0 + i * self.ssm_bytes)
                for i, (conv_i, ssm_i) in enumerate(zip(conv.unbind(0), ssm.unbind(0)))]


def _bind_kv_cache(a, state) -> tuple:
    """Grow the KV cache by one position (`block_cpu.grown_kv_cache`, as `attention_call`) and
    point the attention half at it; the C call writes the new k, v and kmask."""
    k, v, kmask = block_cpu.grown_kv_cache(state)
    a.k_cache, a.v_cache, a.kmask, a.S = k.data_ptr(), v.data_ptr(), kmask.data_ptr(), k.shape[2]
    a.cache_b, a.cache_h, a.kmask_b = k.stride(0), k.stride(1), kmask.stride(0)
    return k, v, kmask


def plan_for(blocks, dtype: torch.dtype, shape: torch.Size, states) -> _StackPlan:
    """The kept plan of `blocks` for inputs of `dtype` and `shape`, right after `stack_accepts`
    (or `halves_accept`): at the start of a chain checked against the halves' plans, and
    rebuilt if they changed."""
    plan = _STACKS.get(blocks)
    if plan is not None and plan.continues(dtype, shape, states):
        return plan
    signature = _signature(blocks)
    if plan is None or plan.signature != signature or plan.dtype != dtype:
        plan = _STACKS[blocks] = _StackPlan(blocks, dtype, signature)
    return plan


def stack_step(blocks, norm, x: Tensor, states, r) -> tuple[Tensor, tuple]:
    """x: (B, 1, d_model) embeddings, states: one per block -> the last block's output, the new
    states. Right after `stack_accepts`."""
    return plan_for(blocks, x.dtype, x.shape, states).run(x.contiguous(), states)


CPU_STACK = BlockStep(part="stack", fn=stack_step, accepts=stack_accepts,
                      description="every block of the model in one C call (the halves of block_cpu.c)")
