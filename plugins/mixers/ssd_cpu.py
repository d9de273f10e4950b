"""Fused CPU SSD scan (Mamba-2): `ssd_cpu.c` compiled on first use, loaded with ctypes.

Built and threaded with the machinery of the Mamba-1 kernel (`scan_cpu`): the system C
compiler, the per-user cache keyed by source, compiler, flags and CPU, and Python threads
(ctypes releases the GIL) on disjoint units of work, threads rather than OpenMP for the
reason given there. The forward's units are (batch, head, 64 channels of headdim); the
backward's are (batch, group, range of heads), so that each writes its own partial sums of
dB and dC. Inputs are read as contiguous float32 (a bfloat16 input is converted: the copy
is d_state times smaller than the work); headdim is zero-padded to a multiple of the
kernel's vector width. Without a compiler the kernel reports itself unavailable and
``auto`` picks ``chunked``.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid_mllm.core.errors import KernelUnavailableError
from hybrid_mllm.core.ssd import SSDKernel, check_shapes

from . import scan_cpu, step_cpu
from .scan_cpu import BuildError

SOURCE = scan_cpu.SOURCE.with_name("ssd_cpu.c")
GRAD_PARTS = 8  # head ranges per (batch, group) in the backward, fixed for determinism
_F32P = ctypes.POINTER(ctypes.c_float)


def build_library() -> ctypes.CDLL:
    """Compile `SOURCE` once per source, headers, compiler, flags and CPU into scan_cpu's cache
    (`step_cpu.build_library`); load it."""
    return ctypes.CDLL(str(step_cpu.build_library(scan_cpu.find_compiler(), scan_cpu.cache_dir(), SOURCE)))


_load_lock = threading.Lock()


def _library() -> ctypes.CDLL | str:
    """The loaded kernel library, or a one-line reason why there is none (warned once)."""
    with _load_lock:
        return _load_library()


@functools.cache
def _load_library() -> ctypes.CDLL | str:
    try:
        lib = build_library()
    except (BuildError, OSError) as exc:
        reason = (f"the fused CPU SSD kernel could not be built ({scan_cpu._first_line(str(exc))}); "
                  f"install a C compiler (e.g. `apt install gcc`) or set $CC")
        warnings.warn(f"{reason}. Using the slower 'chunked' SSD kernel instead.", RuntimeWarning, stacklevel=2)
        return reason
    lib.ssd_forward.argtypes = [ctypes.POINTER(_Args), ctypes.c_int64, ctypes.c_int64]
    lib.ssd_forward.restype = None
    lib.ssd_backward.argtypes = [ctypes.POINTER(_GradArgs), ctypes.c_int64, ctypes.c_int64]
    lib.ssd_backward.restype = ctypes.c_int
    lib.ssd_lanes.restype = ctypes.c_int
    return lib


def available(device: torch.device) -> str | None:
    """None when the kernel runs on `device` (CPU, library built), else a one-line reason."""
    if torch.device(device).type != "cpu":
        return "the fused SSD kernel runs on CPU tensors only"
    lib = _library()
    return lib if isinstance(lib, str) else None


def _lib() -> ctypes.CDLL:
    lib = _library()
    if isinstance(lib, str):
        raise KernelUnavailableError(f"ssd kernel 'cpu' is not available: {lib}")
    return lib


class _Args(ctypes.Structure):  # mirrors ssd_args of ssd_cpu.c
    _fields_ = [(name, _F32P) for name in ("x", "dt", "A", "B", "C", "D", "state", "y", "last_state")] + [
        (name, ctypes.c_int64) for name in ("batch", "len", "nheads", "headdim", "ngroups", "nstate")]


class _GradArgs(ctypes.Structure):  # mirrors ssd_grad_args
    _fields_ = [("fwd", _Args)] + [(name, _F32P) for name in (
        "dy", "dlast_state", "dx", "ddt", "dA", "dD", "dstate", "dB", "dC")] + [("parts", ctypes.c_int64)]


def _ptr(t: Tensor | None):
    return None if t is None else ctypes.cast(t.data_ptr(), _F32P)


def _padded_p(t: Tensor | None, width: int) -> Tensor | None:
    """`t` (..., P) as contiguous float32 with its last axis zero-padded to `width`."""
    if t is None:
        return None
    t = t.detach().float()
    return F.pad(t, (0, width - t.shape[-1])).contiguous()


def _kernel_inputs(x, dt, A, B, C, D, state) -> dict:
    """The inputs as the kernel reads them: contiguous float32, headdim padded to the vector
    width, the state transposed to (batch, H, N, P); "P" keeps the true headdim."""
    check_shapes(x, dt, A, B, C, D, state)  # the C kernel trusts them with raw pointers
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("state", state)):
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"ssd kernel 'cpu' needs CPU tensors; {name} is on {t.device}")
    lanes = _lib().ssd_lanes()
    headdim = x.shape[-1]
    width = -(-headdim // lanes) * lanes
    return {
        "x": _padded_p(x, width), "dt": dt.detach().float().contiguous(), "A": A.detach().float().contiguous(),
        "B": B.detach().float().contiguous(), "C": C.detach().float().contiguous(),
        "D": None if D is None else D.detach().float().contiguous(),
        "state": None if state is None else _padded_p(state.transpose(-1, -2), width), "P": headdim,
    }


def _args(k: dict, y: Tensor | None, last_state: Tensor | None) -> _Args:
    batch, length, nheads, width = k["x"].shape
    return _Args(*(_ptr(k[n]) for n in ("x", "dt", "A", "B", "C", "D", "state")), _ptr(y), _ptr(last_state),
                 batch, length, nheads, width, k["B"].shape[2], k["B"].shape[3])


def _forward(k: dict) -> tuple[Tensor, Tensor]:
    """y (batch, L, H, P) float32 and the last state (batch, H, P, N) float32."""
    batch, length, nheads, width = k["x"].shape
    y = torch.empty(batch, length, nheads, width)
    last_state = torch.empty(batch, nheads, k["B"].shape[3], width)
    args = _args(k, y, last_state)
    units = batch * nheads * -(-width // (4 * _lib().ssd_lanes()))
    ranges = scan_cpu._split(0, units, 4 * torch.get_num_threads())
    scan_cpu._run([(_lib().ssd_forward, ctypes.byref(args), start, stop) for start, stop in ranges])
    return y[..., :k["P"]], last_state[..., :k["P"]].transpose(-1, -2).contiguous()


def _backward(k: dict, dy: Tensor, dlast_state: Tensor | None) -> dict[str, Tensor]:
    """Gradients of x, dt, A, B, C, D and state, float32."""
    batch, length, nheads, width = k["x"].shape
    ngroups, d_state = k["B"].shape[2], k["B"].shape[3]
    parts = min(GRAD_PARTS, nheads // ngroups)
    grads = {
        "x": torch.empty(batch, length, nheads, width), "dt": torch.zeros(batch, length, nheads),
        "A": torch.zeros(batch, nheads), "D": torch.zeros(batch, nheads),
        "state": torch.empty(batch, nheads, d_state, width),
        "B": torch.zeros(batch, parts, length, ngroups, d_state), "C": torch.zeros(batch, parts, length, ngroups, d_state),
    }
    dy = _padded_p(dy, width)
    dlast = None if dlast_state is None else _padded_p(dlast_state.transpose(-1, -2), width)
    args = _GradArgs(_args(k, None, None), _ptr(dy), _ptr(dlast), *(_ptr(grads[n]) for n in (
        "x", "dt", "A", "D", "state", "B", "C")), parts)
    ranges = scan_cpu._split(0, batch * ngroups * parts, 4 * torch.get_num_threads())
    if any(scan_cpu._run([(_lib().ssd_backward, ctypes.byref(args), start, stop) for start, stop in ranges])):
        raise MemoryError("the fused SSD backward could not allocate its workspace")
    P = k["P"]
    grads["x"], grads["state"] = grads["x"][..., :P], grads["state"][..., :P].transpose(-1, -2)
    for name in ("B", "C"):
        grads[name] = scan_cpu._sum_in_order(grads[name], 1)
    for name in ("A", "D"):
        grads[name] = scan_cpu._sum_in_order(grads[name], 0)
    return grads


_INPUTS = ("x", "dt", "A", "B", "C", "D", "state")


class _FusedSSD(torch.autograd.Function):
    """The fused scan with its exact backward (the C kernel recomputes the forward states)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, state):
        ctx.save_for_backward(x, dt, A, B, C, D, state)
        y, last_state = _forward(_kernel_inputs(x, dt, A, B, C, D, state))
        return y.to(x.dtype), last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dlast_state):
        saved = ctx.saved_tensors
        grads = _backward(_kernel_inputs(*saved), dy, dlast_state)
        return tuple(grads[name].to(t.dtype) if t is not None and needed else None
                     for name, t, needed in zip(_INPUTS, saved, ctx.needs_input_grad))


def ssd_scan_cpu(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, state: Tensor | None,
                 chunk_size: int = 256) -> tuple[Tensor, Tensor]:
    """Same shapes as `hybrid_mllm.core.ssd.ssd_scan`, on CPU tensors (chunk_size is unused).

    x: (batch, L, H, P)  dt: (batch, L, H)  A: (H,)  B, C: (batch, L, G, N)  D: (H,)
    state: (batch, H, P, N) -> y: (batch, L, H, P) in x's dtype, last_state: (batch, H, P, N) float32.
    """
    inputs = (x, dt, A, B, C, D, state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _FusedSSD.apply(*inputs)
    y, last_state = _forward(_kernel_inputs(*inputs))
    return y.to(x.dtype), last_state


CPU_SSD = SSDKernel(
    fn=ssd_scan_cpu, priority={"cpu": 100}, available=available,
    description="fused C kernel compiled on first use, threads over (batch, head), exact backward (CPU)",
)
