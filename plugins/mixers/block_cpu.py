"""Fused CPU decode steps of a block's halves: `block_cpu.c`, compiled on first use, loaded with ctypes.

A decode step of a small hybrid spends most of its time dispatching: some forty torch ops,
ctypes calls and module calls per block, each a few microseconds. These steps run a half of
a `Block` in one C call for up to `gemv_cpu.MAX_ROWS` rows: pre-norm, the SwiGLU MLP or the
top-k MoE of SwiGLU experts (`ffn_part`), in_proj, the fused Mamba-1 step of `step_cpu` and
out_proj (`mamba_part`), or q/k/v, RoPE, the KV cache and o_proj (`attention_part`), then the
residual. The library links `gemv_cpu.c`, `step_cpu.c` (their kernels, not copies) and
`pool_cpu.c` (with two torch threads, each product's columns shared with a second thread
that spins briefly, yields, then sleeps; the caller never waits for it to start) and is
built by `step_cpu.build_library`. They serve `hybrid_mllm.core.model.Block` through the
``register_block_steps`` hook (and `stack_cpu` the whole model); weights are read where the
model holds them (pointers cached per module, rebuilt when a storage or a setting changes).
"""

from __future__ import annotations

import ctypes
import functools
import threading
import weakref
from pathlib import Path

import torch
from torch import Tensor

from hybrid_mllm.core.decode import BlockStep
from hybrid_mllm.core.ffn import MoE, SwiGLU

from . import gemv_cpu, kv_cache, step_cpu
from .attention import Attention
from .mamba import Mamba
from .scan_cpu import KERNEL_DTYPES, BuildError, _first_line, cache_dir, find_compiler

SOURCE = Path(__file__).with_name("block_cpu.c")
POOL_SOURCE = Path(__file__).with_name("pool_cpu.c")  # its products on a second thread
_VOIDP = ctypes.c_void_p


class SwiGLUWeights(ctypes.Structure):
    """Mirrors `SwiGLUWeights` in block_cpu.c."""

    _fields_ = [(name, _VOIDP) for name in ("gate", "up", "down", "gate_b", "up_b", "down_b")]


class FFNArgs(ctypes.Structure):
    """Mirrors `FFNArgs` in block_cpu.c."""

    _fields_ = [(name, _VOIDP) for name in ("x", "out", "norm_w", "experts", "router", "work")] + [
        (name, ctypes.c_int64) for name in ("M", "d", "H", "n_experts", "top_k")] + [
        ("eps", ctypes.c_float), ("r", ctypes.c_float), ("normalize", ctypes.c_int32), ("dtype", ctypes.c_int32)]


class AttentionPartArgs(ctypes.Structure):
    """Mirrors `AttentionPartArgs` in block_cpu.c."""

    _fields_ = [(name, _VOIDP) for name in ("x", "out", "norm_w", "q_w", "k_w", "v_w", "o_w", "q_b", "k_b", "v_b",
                                              "o_b", "k_cache", "v_cache", "kmask", "inv_freq", "work")] + [
        (name, ctypes.c_int64) for name in ("M", "d", "n_head", "n_kv_head", "head_dim", "rotary_dim", "S", "cache_b",
                                            "cache_h", "kmask_b")] + [
        ("eps", ctypes.c_float), ("r", ctypes.c_float), ("dtype", ctypes.c_int32)]


class MambaPartArgs(ctypes.Structure):
    """Mirrors `MambaPartArgs` in block_cpu.c."""

    _fields_ = [(name, _VOIDP) for name in ("x", "out", "norm_w", "in_w", "in_b", "out_w", "out_b", "step", "h",
                                              "xz", "y")] + [
        (name, ctypes.c_int64) for name in ("M", "d", "d_inner")] + [
        ("eps", ctypes.c_float), ("r", ctypes.c_float), ("dtype", ctypes.c_int32)]


_load_lock = threading.Lock()


@functools.cache
def _load_library() -> ctypes.CDLL | str:
    try:
        lib = ctypes.CDLL(str(step_cpu.build_library(find_compiler(), cache_dir(), SOURCE,
                                                     also=(gemv_cpu.SOURCE, step_cpu.SOURCE, POOL_SOURCE))))
    except (BuildError, OSError) as exc:
        return f"the fused CPU block steps could not be built ({_first_line(str(exc))})"
    lib.ffn_part.argtypes = [ctypes.POINTER(FFNArgs)]
    lib.mamba_part.argtypes = [ctypes.POINTER(MambaPartArgs)]
    lib.attention_part.argtypes = [ctypes.POINTER(AttentionPartArgs)]
    lib.stack_step.argtypes = [ctypes.c_void_p, ctypes.c_int64]  # (LayerArgs *, n_layers): stack_cpu.py
    lib.model_step.argtypes, lib.model_step.restype = [ctypes.c_void_p], ctypes.c_int64  # (ModelArgs *): model_cpu.py
    lib.pool_set_threads.argtypes, lib.pool_set_threads.restype = [ctypes.c_int32], None
    lib.ffn_part.restype = lib.mamba_part.restype = lib.attention_part.restype = lib.stack_step.restype = None
    return lib


@functools.cache
def available(dtype: torch.dtype) -> str | None:
    """None when the steps for `dtype` activations are built and their products vectorized, else why not."""
    with _load_lock:
        lib = _load_library()
    return lib if isinstance(lib, str) else gemv_cpu.available(dtype)


def _takes_input(x: Tensor) -> bool:
    """A few float32 / bfloat16 rows (B, 1, d) on the CPU, the library built."""
    return (x.device.type == "cpu" and x.dtype in KERNEL_DTYPES and 1 <= x.shape[0] <= gemv_cpu.MAX_ROWS
            and available(x.dtype) is None)


def _takes_weights(tensors, dtype: torch.dtype) -> bool:
    """All of `dtype`, contiguous and on the CPU (None: an absent bias). Large weights too: with
    two threads `pool_cpu.c` shares their columns as the unfused path's threads would."""
    return all(t is None or (t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu") for t in tensors)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _Plans:
    """Per module, the argument struct whose weight fields point at its parameters, rebuilt when
    a parameter's storage, a setting it copies (``settings``: eps, top_k, ...), the dtype or the
    thread count changes (in-place updates of the parameters are read live)."""

    def __init__(self, build):
        self._build, self._plans = build, weakref.WeakKeyDictionary()

    def get(self, module, norm, dtype: torch.dtype):
        """-> the plan (None: these weights are not taken), after `tensors` of the module gave its key."""
        tensors = self._build.tensors(module, norm)
        key = (dtype, torch.get_num_threads() > 1, self._build.settings(module, norm),
               *[None if t is None else t.data_ptr() for t in tensors])
        cached = self._plans.get(module)
        if cached is None or cached[0] != key:
            plan = self._build(module, norm, dtype) if _takes_weights(tensors, dtype) else None
            cached = self._plans[module] = (key, plan)
        return cached[1]

    def last(self, module):
        """The plan `get` returned last (`BlockStep.fn` runs right after `accepts`)."""
        return self._plans[module][1]


# ---- the FFN half ------------------------------------------------------------------------------

def _weight_bias(linear) -> tuple:
    """(weight, bias or None) of an nn.Linear, read from its parameter dict: this runs every
    token, and nn.Module's attribute lookup of a parameter costs a fallback to `__getattr__`."""
    params = linear._parameters
    return params["weight"], params.get("bias")


def _swiglu_tensors(mlp: SwiGLU) -> tuple:
    layers = mlp._modules
    gate, up, down = layers["gate"]._parameters, layers["up"]._parameters, layers["down"]._parameters
    return gate["weight"], up["weight"], down["weight"], gate.get("bias"), up.get("bias"), down.get("bias")


class _FFNPlan:
    """An `FFNArgs` template for a SwiGLU MLP or an MoE (its experts' `SwiGLUWeights` array kept here)."""

    @staticmethod
    def settings(ffn, norm) -> tuple:
        return (norm.eps,) if type(ffn) is SwiGLU else (norm.eps, ffn.top_k, ffn.normalize_top_k)

    @staticmethod
    def tensors(ffn, norm) -> list:
        norm_w = norm._parameters["weight"]
        if type(ffn) is SwiGLU:
            return [norm_w, *_swiglu_tensors(ffn)]
        parts = ffn._modules
        tensors = [norm_w, parts["router"]._parameters["weight"]]
        for expert in parts["experts"]._modules.values():
            tensors += _swiglu_tensors(expert)
        return tensors

    def __init__(self, ffn, norm, dtype: torch.dtype):
        moe = type(ffn) is MoE
        experts = list(ffn.experts) if moe else [ffn]
        self.experts = (SwiGLUWeights * len(experts))(*(SwiGLUWeights(*map(_ptr, _swiglu_tensors(e))) for e in experts))
        d, hidden = experts[0].gate.in_features, experts[0].gate.out_features
        self.top_k = ffn.top_k if moe else 1
        self.work_floats = lambda rows: rows * (4 * d + 2 * hidden + len(experts) + self.top_k) + len(experts)
        self.args = FFNArgs(norm_w=norm.weight.data_ptr(), experts=ctypes.addressof(self.experts),
                            router=ffn.router.weight.data_ptr() if moe else None, d=d, H=hidden,
                            n_experts=len(experts), top_k=self.top_k, eps=norm.eps,
                            normalize=int(moe and ffn.normalize_top_k), dtype=KERNEL_DTYPES[dtype])


ffn_plans = _Plans(_FFNPlan)


def ffn_accepts(ffn, norm, x: Tensor, state) -> bool:
    """A SwiGLU MLP or an MoE of SwiGLU experts (exactly these classes: a subclass may compute
    something else), weights in x's dtype."""
    return type(ffn) in (SwiGLU, MoE) and _takes_input(x) and ffn_plans.get(ffn, norm, x.dtype) is not None


def ffn_call(ffn, x: Tensor, out: Tensor, r: float) -> tuple[FFNArgs, tuple]:
    """The `FFNArgs` of ``out = x + r * ffn(norm(x))`` (x, out: (B, 1, d) contiguous), and what
    must stay alive until the call ran; after `ffn_accepts`."""
    plan = ffn_plans.last(ffn)
    work = torch.empty(plan.work_floats(x.shape[0]))
    a = FFNArgs.from_buffer_copy(plan.args)
    a.x, a.out, a.work, a.M, a.r = x.data_ptr(), out.data_ptr(), work.data_ptr(), x.shape[0], r
    return a, (work,)


def ffn_step(ffn, norm, x: Tensor, state, r: float) -> tuple[Tensor, tuple]:
    """x: (B, 1, d_model) -> x + r * ffn(norm(x)), (); one C call."""
    x = x.contiguous()
    out = torch.empty_like(x)
    a, _alive = ffn_call(ffn, x, out, r)
    lib = _load_library()
    lib.pool_set_threads(torch.get_num_threads())
    lib.ffn_part(ctypes.byref(a))
    return out, ()


# ---- the Mamba half ----------------------------------------------------------------------------

class _MambaPlan:
    """A `MambaPartArgs` template: the norm and the two projections (the step's own small
    weights are the mixer's `_step_weights`, float32 copies it rebuilds when they change)."""

    @staticmethod
    def settings(mamba, norm) -> tuple:
        return (norm.eps,)

    @staticmethod
    def tensors(mamba, norm) -> tuple:
        layers = mamba._modules
        return norm._parameters["weight"], *_weight_bias(layers["in_proj"]), *_weight_bias(layers["out_proj"])

    def __init__(self, mamba, norm, dtype: torch.dtype):
        self.d_model, self.d_inner = mamba.d_model, mamba.d_inner
        self.args = MambaPartArgs(norm_w=norm.weight.data_ptr(), in_w=mamba.in_proj.weight.data_ptr(),
                                  in_b=_ptr(mamba.in_proj.bias), out_w=mamba.out_proj.weight.data_ptr(),
                                  out_b=_ptr(mamba.out_proj.bias), d=mamba.d_model, d_inner=mamba.d_inner,
                                  eps=norm.eps, dtype=KERNEL_DTYPES[dtype])


mamba_plans = _Plans(_MambaPlan)


def mamba_accepts(mixer, norm, x: Tensor, state) -> bool:
    """A Mamba-1 mixer whose own fused step applies (one token from a state, default scan),
    projections in x's dtype."""
    return (type(mixer) is Mamba and _takes_input(x) and mixer.fused_step_takes(x, state)
            and mamba_plans.get(mixer, norm, x.dtype) is not None)


def mamba_call(mixer, x: Tensor, out: Tensor, state, r: float) -> tuple[MambaPartArgs, tuple, tuple]:
    """The `MambaPartArgs` of ``out = x + r * mamba(norm(x))`` (x, out: (B, 1, d) contiguous),
    the new state it writes, and what must stay alive until the call ran; after `mamba_accepts`."""
    plan, batch = mamba_plans.last(mixer), x.shape[0]
    xz, h = torch.empty(batch, 2 * plan.d_inner, dtype=x.dtype), torch.empty_like(x)
    step, y, conv_state, ssm_state, alive = step_cpu.prepare_step(mixer._step_weights(), xz, *state)
    a = MambaPartArgs.from_buffer_copy(plan.args)
    a.x, a.out, a.h, a.xz, a.y = x.data_ptr(), out.data_ptr(), h.data_ptr(), xz.data_ptr(), y.data_ptr()
    a.step, a.M, a.r = ctypes.addressof(step), batch, r
    return a, (conv_state, ssm_state), (step, xz, h, y, alive)


def mamba_block_step(mixer, norm, x: Tensor, state, r: float) -> tuple[Tensor, tuple]:
    """x: (B, 1, d_model), state (conv_state, ssm_state) -> x + r * mamba(norm(x)), the new state; one C call."""
    x = x.contiguous()
    out = torch.empty_like(x)
    a, state, _alive = mamba_call(mixer, x, out, state, r)
    lib = _load_library()
    lib.pool_set_threads(torch.get_num_threads())
    lib.mamba_part(ctypes.byref(a))
    return out, state


# ---- the attention half -------------------------------------------------------------------------

class _AttentionPlan:
    """An `AttentionPartArgs` template: the norm, the four projections and RoPE's frequencies
    (computed as `attention._rotate` computes them, so the angles are the same floats)."""

    @staticmethod
    def settings(attn, norm) -> tuple:
        return norm.eps, attn.rope, attn.rope_theta, attn.rotary_dim

    @staticmethod
    def tensors(attn, norm) -> tuple:
        layers = attn._modules
        return norm._parameters["weight"], *(t for n in ("q_proj", "k_proj", "v_proj", "o_proj")
                                             for t in _weight_bias(layers[n]))

    def __init__(self, attn, norm, dtype: torch.dtype):
        (norm_w, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b) = self.tensors(attn, norm)
        half = attn.rotary_dim // 2
        self.inv_freq = attn.rope_theta ** (-torch.arange(half, dtype=torch.float32) / half) if attn.rope else None
        self.n_kv_head, self.head_dim = attn.n_kv_head, attn.head_dim
        width = norm_w.shape[0] + (attn.n_head + 2 * attn.n_kv_head) * attn.head_dim  # work slots per row
        # rows (h, q, k, v) + y + scores of every query head over the positions (each (row, KV
        # head) unit its own: the units run on two threads)
        self.work_floats = lambda rows, positions: (rows * width + rows * attn.n_head * attn.head_dim
                                                    + rows * attn.n_head * positions + 16)
        self.args = AttentionPartArgs(
            norm_w=norm_w.data_ptr(), q_w=q_w.data_ptr(), k_w=k_w.data_ptr(), v_w=v_w.data_ptr(), o_w=o_w.data_ptr(),
            q_b=_ptr(q_b), k_b=_ptr(k_b), v_b=_ptr(v_b), o_b=_ptr(o_b), inv_freq=_ptr(self.inv_freq),
            d=norm_w.shape[0], n_head=attn.n_head, n_kv_head=attn.n_kv_head, head_dim=attn.head_dim,
            rotary_dim=attn.rotary_dim, eps=norm.eps, dtype=KERNEL_DTYPES[dtype])


attention_plans = _Plans(_AttentionPlan)


def attention_accepts(attn, norm, x: Tensor, state) -> bool:
    """An `Attention` mixer stepping from a KV cache of x's dtype, projections in x's dtype."""
    return (type(attn) is Attention and state is not None and x.shape[1] == 1 and _takes_input(x)
            and state[0].dtype == x.dtype and state[1].dtype == x.dtype
            and attention_plans.get(attn, norm, x.dtype) is not None)


def attention_call(attn, x: Tensor, out: Tensor, state, r: float) -> tuple[AttentionPartArgs, tuple, tuple]:
    """The `AttentionPartArgs` of ``out = x + r * attention(norm(x))`` (x, out: (B, 1, d)
    contiguous), the new (k, v, kmask), and what must stay alive until the call ran; after
    `attention_accepts`.

    The cache grows by one position through `kv_cache.extend`, as `kv_cache.append` on the
    unfused path (room reserved, old states never overwritten); the C call writes the new
    position's k, v and kmask into it. The views `extend` returns have the layout the C call
    reads: (S, hd) rows contiguous, kmask rows too."""
    plan, batch = attention_plans.last(attn), x.shape[0]
    k, v, kmask = grown_kv_cache(state)
    work = torch.empty(plan.work_floats(batch, k.shape[2]))
    a = AttentionPartArgs.from_buffer_copy(plan.args)
    a.x, a.out, a.work, a.M, a.r = x.data_ptr(), out.data_ptr(), work.data_ptr(), batch, r
    a.k_cache, a.v_cache, a.kmask, a.S = k.data_ptr(), v.data_ptr(), kmask.data_ptr(), k.shape[2]
    a.cache_b, a.cache_h, a.kmask_b = k.stride(0), k.stride(1), kmask.stride(0)
    return a, (k, v, kmask), (work,)


def grown_kv_cache(state) -> tuple[Tensor, Tensor, Tensor]:
    """(k, v, kmask) of S positions -> views of S + 1, the last position unwritten (`kv_cache.extend`)."""
    past_k, past_v, past_mask = state
    return kv_cache.extend(past_k, 1, 2), kv_cache.extend(past_v, 1, 2), kv_cache.extend(past_mask, 1, 1)


def attention_block_step(attn, norm, x: Tensor, state, r: float) -> tuple[Tensor, tuple]:
    """x: (B, 1, d_model), state (k, v, kmask) -> x + r * attention(norm(x)), the new (k, v, kmask); one C call."""
    x = x.contiguous()
    out = torch.empty_like(x)
    a, state, _alive = attention_call(attn, x, out, state, r)
    lib = _load_library()
    lib.pool_set_threads(torch.get_num_threads())
    lib.attention_part(ctypes.byref(a))
    return out, state


CPU_FFN = BlockStep(part="ffn", fn=ffn_step, accepts=ffn_accepts,
                    description="pre-norm, SwiGLU MLP or top-k MoE of SwiGLU experts and residual in one C call")
CPU_MAMBA = BlockStep(part="mixer", fn=mamba_block_step, accepts=mamba_accepts,
                      description="pre-norm, in_proj, the fused Mamba-1 step, out_proj and residual in one C call")
CPU_ATTENTION = BlockStep(part="mixer", fn=attention_block_step, accepts=attention_accepts,
                          description="pre-norm, q/k/v, RoPE, KV-cache append, GQA attention, o_proj and residual "
                                      "in one C call")
