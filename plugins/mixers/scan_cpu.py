"""Fused CPU selective scan: `scan_cpu.c` compiled on first use, loaded with ctypes.

The C kernel keeps each row's state (d_state floats) in registers and reads every input
once; Python threads (ctypes releases the GIL) run it on disjoint blocks of rows, a row
being one (batch, channel) pair. Threads rather than OpenMP: torch ships its own OpenMP
runtime, and two runtimes in one process (or fork after OpenMP) are known trouble.

The library is built with the system C compiler into a per-user cache
(``$HYBRID_MLLM_CACHE`` or ``~/.cache/hybrid_mllm``), keyed by a hash of the source, the
compiler, its flags and the CPU. Without a compiler the kernel reports itself unavailable,
``auto`` picks ``chunked``, and one warning says how to fix it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import os
import platform
import re
import shlex
import shutil
import subprocess
import sysconfig
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from hybrid_mllm.core.atomic import replacing
from hybrid_mllm.core.errors import KernelUnavailableError
from hybrid_mllm.core.scan import ScanKernel

SOURCE = Path(__file__).with_name("scan_cpu.c")
CACHE_ENV = "HYBRID_MLLM_CACHE"
# No -ffast-math: linking with it pulls in crtfastmath.o, which flushes denormals to zero
# for the whole process. -fopenmp-simd honours `omp simd` pragmas without the OpenMP runtime.
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fopenmp-simd")
CFLAGS_ENV = "HYBRID_MLLM_CFLAGS"  # more flags after FLAGS, e.g. "-mno-avx512f" to build the AVX2 kernels
KERNEL_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # dtype codes of scan_cpu.c
GRAD_GROUPS = 16  # channel groups per batch element in the backward, fixed for determinism


class BuildError(RuntimeError):
    """The C kernel could not be compiled; the message's first line says why."""


# ---- build, cache, load -------------------------------------------------------------------

def find_compiler() -> str | None:
    """Path of the C compiler: ``$CC``, Python's own ``CC``, then ``cc``, ``gcc``, ``clang``."""
    candidates = [os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"]
    for candidate in filter(None, candidates):
        found = shutil.which(shlex.split(candidate)[0])
        if found:
            return found
    return None


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$HYBRID_MLLM_CACHE`` or ``~/.cache/hybrid_mllm``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hybrid_mllm")


def flags() -> tuple[str, ...]:
    """The compiler flags of the CPU kernels: `FLAGS`, then ``$HYBRID_MLLM_CFLAGS`` split as a shell would."""
    return (*FLAGS, *shlex.split(os.environ.get(CFLAGS_ENV, "")))


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo's first ``flags`` line (x86), or of its text `cpuinfo`;
    empty where there is none (other CPUs and systems)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    lines = (line for line in cpuinfo.splitlines() if line.startswith("flags"))
    return frozenset(next((line.split(":", 1)[1].split() for line in lines), ()))


def _cpu_id() -> str:
    """Model and feature flags of this CPU: ``-march=native`` code is only valid on it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keys = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))


def _compiler_version(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"cannot run the C compiler {compiler}: {exc}") from exc
    if result.returncode != 0:
        raise BuildError(f"{compiler} --version failed: {_first_line(result.stderr)}")
    return result.stdout


def build_library(compiler: str | None, cache: Path) -> Path:
    """Compile `SOURCE` with `compiler` into `cache` (once per source, compiler, flags, CPU).

    Safe when several processes build at once: each compiles to its own temporary name and
    atomically renames it into place. Raises `BuildError` when it cannot build.
    """
    if compiler is None:
        raise BuildError("no C compiler found (looked for $CC, cc, gcc, clang)")
    key = hashlib.sha256(b"\0".join([
        SOURCE.read_bytes(), *(h.read_bytes() for h in local_headers(SOURCE)), compiler.encode(),
        _compiler_version(compiler).encode(),
        " ".join(flags()).encode(), _cpu_id().encode(), platform.machine().encode(),
    ])).hexdigest()[:20]
    target = cache / f"scan_cpu_{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp:
        result = subprocess.run([compiler, *flags(), str(SOURCE), "-o", str(tmp)],
                                capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise BuildError(f"{compiler} failed: {_error_line(result.stderr)}")
    return target


def local_headers(source: Path) -> list[Path]:
    """The headers `source` includes with quotes (they sit beside it): part of a build's cache
    key, so that a change to one rebuilds."""
    return [source.with_name(name) for name in re.findall(r'^#include "([^"]+)"', source.read_text(), re.MULTILINE)]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "(no output)")


def _error_line(stderr: str) -> str:
    """The compiler's first error line (gcc starts with context such as 'In function')."""
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    return _first_line(errors[0] if errors else stderr)


_load_lock = threading.Lock()


def _library() -> ctypes.CDLL | str:
    """The loaded kernel library, or a one-line reason why there is none (warned once)."""
    with _load_lock:  # one build and at most one warning, even when threads race here
        return _load_library()


@functools.cache
def _load_library() -> ctypes.CDLL | str:
    try:
        lib = ctypes.CDLL(str(build_library(find_compiler(), cache_dir())))
    except (BuildError, OSError) as exc:
        reason = (f"the fused CPU scan kernel could not be built ({_first_line(str(exc))}); "
                  f"install a C compiler (e.g. `apt install gcc`) or set $CC")
        warnings.warn(f"{reason}. Using the slower 'chunked' scan kernel instead.", RuntimeWarning, stacklevel=2)
        return reason
    lib.scan_forward.argtypes = [ctypes.POINTER(_Args), ctypes.c_int64, ctypes.c_int64]
    lib.scan_forward.restype = None
    lib.scan_backward.argtypes = [ctypes.POINTER(_GradArgs), ctypes.c_int64, ctypes.c_int64,
                                  ctypes.c_void_p, ctypes.c_void_p]
    lib.scan_backward.restype = ctypes.c_int
    lib.scan_lanes.restype = ctypes.c_int
    return lib


def available(device: torch.device) -> str | None:
    """None when the kernel runs on `device` (CPU, library built), else a one-line reason."""
    if torch.device(device).type != "cpu":
        return "the fused scan kernel runs on CPU tensors only"
    lib = _library()
    return lib if isinstance(lib, str) else None


def _lib() -> ctypes.CDLL:
    lib = _library()
    if isinstance(lib, str):
        raise KernelUnavailableError(f"scan kernel 'cpu_fused' is not available: {lib}")
    return lib


# ---- argument structs (mirror scan_cpu.c) --------------------------------------------------

class _Seq(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("stride", ctypes.c_int64 * 3), ("dtype", ctypes.c_int32)]


_F32P = ctypes.POINTER(ctypes.c_float)


class _Args(ctypes.Structure):
    _fields_ = [
        ("u", _Seq), ("delta", _Seq), ("z", _Seq), ("y", _Seq),
        ("A", _F32P), ("B", _F32P), ("C", _F32P), ("D", _F32P), ("delta_bias", _F32P),
        ("state", _F32P), ("last_state", _F32P),
        ("batch", ctypes.c_int64), ("dim", ctypes.c_int64), ("len", ctypes.c_int64),
        ("nstate", ctypes.c_int64), ("softplus", ctypes.c_int32),
    ]


class _GradArgs(ctypes.Structure):
    _fields_ = [
        ("fwd", _Args), ("dy", _Seq), ("du", _Seq), ("ddelta", _Seq), ("dz", _Seq),
        ("dlast_state", _F32P), ("dA", _F32P), ("dD", _F32P), ("ddelta_bias", _F32P), ("dstate", _F32P),
    ]


def _seq(t: Tensor | None) -> _Seq:
    """A (batch, D, L) tensor of a kernel dtype, any strides; an empty struct for None."""
    if t is None:
        return _Seq()
    return _Seq(t.data_ptr(), (ctypes.c_int64 * 3)(*t.stride()), KERNEL_DTYPES[t.dtype])


def _ptr(t: Tensor | None):
    """float* of a contiguous float32 tensor, or NULL."""
    return None if t is None else ctypes.cast(t.data_ptr(), _F32P)


def _kernel_dtype(t: Tensor | None) -> Tensor | None:
    """`t` itself when the kernel reads its dtype (float32, bfloat16), else a float32 copy."""
    return t if t is None or t.dtype in KERNEL_DTYPES else t.float()


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().float().contiguous()


def _empty_like_kernel(t: Tensor) -> Tensor:
    """An output for `t`'s values, in `t`'s dtype when the kernel writes it, else float32."""
    return torch.empty(t.shape, dtype=t.dtype if t.dtype in KERNEL_DTYPES else torch.float32)


# ---- threads ------------------------------------------------------------------------------

_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool)


def _executor() -> ThreadPoolExecutor:
    """A pool of `torch.get_num_threads()` threads, rebuilt when that changes or after fork."""
    global _pool
    threads = torch.get_num_threads()
    with _pool_lock:
        if _pool is None or _pool[:2] != (os.getpid(), threads):
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="scan_cpu"))
        return _pool[2]


def _run(calls: list[tuple]) -> list:
    """Run each ``(fn, *args)`` in `calls`, in parallel when there are threads to use: the first
    on the calling thread, the others on the pool (one hand-off fewer than pooling them all)."""
    if len(calls) == 1 or torch.get_num_threads() == 1:
        return [fn(*args) for fn, *args in calls]
    futures = [_executor().submit(fn, *args) for fn, *args in calls[1:]]
    first = calls[0][0](*calls[0][1:])
    return [first, *(f.result() for f in futures)]


def _split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges covering start .. stop, sizes differing by at most one."""
    parts = max(1, min(parts, stop - start))
    bounds = [start + (stop - start) * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


# ---- forward and backward -----------------------------------------------------------------

def _kernel_inputs(u, delta, A, B, C, D, z, delta_bias, state) -> dict:
    """The inputs as the C kernel reads them. u, delta, z keep their strides (and their dtype
    when float32 or bfloat16); B, C become (batch, L, N) so a time step's N values are
    contiguous; the small parameters become contiguous float32. The state axis (N, d_state)
    is zero-padded to a multiple of the kernel's group size; "n" keeps the true N."""
    _check_inputs(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, state=state)
    n = A.shape[1]
    n_pad = -(-n // _lib().scan_lanes()) * _lib().scan_lanes()
    return {
        "u": _kernel_dtype(u.detach()), "delta": _kernel_dtype(delta.detach()),
        "z": _kernel_dtype(None if z is None else z.detach()),
        "A": _padded(A, n_pad), "B": _padded(B.transpose(1, 2), n_pad), "C": _padded(C.transpose(1, 2), n_pad),
        "D": _f32(D), "delta_bias": _f32(delta_bias), "state": _padded(state, n_pad), "n": n,
    }


def _check_inputs(**tensors: Tensor | None) -> None:
    """Shapes and devices, checked before the C kernel trusts them with raw pointers."""
    batch, dim, length = tensors["u"].shape
    n = tensors["A"].shape[-1]
    expected = {"u": (batch, dim, length), "delta": (batch, dim, length), "z": (batch, dim, length),
                "A": (dim, n), "B": (batch, n, length), "C": (batch, n, length),
                "D": (dim,), "delta_bias": (dim,), "state": (batch, dim, n)}
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device.type != "cpu":
            raise ValueError(f"scan kernel 'cpu_fused' needs CPU tensors; {name} is on {t.device}")
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"selective scan: {name} has shape {tuple(t.shape)}, expected {expected[name]} "
                             f"(batch={batch}, D={dim}, L={length}, N={n})")


def _padded(t: Tensor | None, size: int) -> Tensor | None:
    """`t` as contiguous float32, its last axis zero-padded to `size`. With A = B = C = 0 and
    a zero initial state, padded state entries stay 0 and add nothing to y."""
    if t is None:
        return None
    t = t.detach().float()
    return torch.nn.functional.pad(t, (0, size - t.shape[-1])).contiguous() if t.shape[-1] < size else t.contiguous()


def _args(x: dict, softplus: bool, y: Tensor | None, last_state: Tensor | None) -> _Args:
    batch, dim, length = x["u"].shape
    return _Args(
        u=_seq(x["u"]), delta=_seq(x["delta"]), z=_seq(x["z"]), y=_seq(y),
        A=_ptr(x["A"]), B=_ptr(x["B"]), C=_ptr(x["C"]), D=_ptr(x["D"]), delta_bias=_ptr(x["delta_bias"]),
        state=_ptr(x["state"]), last_state=_ptr(last_state),
        batch=batch, dim=dim, len=length, nstate=x["A"].shape[1], softplus=int(softplus),
    )


def _forward(x: dict, softplus: bool) -> tuple[Tensor, Tensor]:
    """y: (batch, D, L) in u's dtype if the kernel writes it (else float32), last state (batch, D, N)."""
    batch, dim, _ = x["u"].shape
    y = _empty_like_kernel(x["u"])
    last_state = torch.empty(batch, dim, x["A"].shape[1])
    args = _args(x, softplus, y, last_state)
    lib = _lib()
    # Every row costs the same: a few ranges per thread balance the load.
    ranges = _split(0, batch * dim, 4 * torch.get_num_threads())
    _run([(lib.scan_forward, ctypes.byref(args), start, stop) for start, stop in ranges])
    return y, last_state[..., :x["n"]].contiguous()


def _sum_in_order(t: Tensor, dim: int) -> Tensor:
    """Sum over `dim`, one slice after another: the same bits whatever the thread count."""
    if t.shape[dim] == 0:
        return t.sum(dim)
    total = t.select(dim, 0).clone()
    for i in range(1, t.shape[dim]):
        total += t.select(dim, i)
    return total


def _backward(x: dict, softplus: bool, dy: Tensor, dlast_state: Tensor | None) -> dict[str, Tensor | None]:
    """Gradients of every kernel input (before dtype casts); dB, dC: (batch, N, L)."""
    batch, dim, length = x["u"].shape
    n = x["A"].shape[1]
    dy, dlast_state = _kernel_dtype(dy), _padded(dlast_state, n)  # locals: the kernel reads them
    grads = {
        "u": _empty_like_kernel(x["u"]), "delta": _empty_like_kernel(x["delta"]),
        "z": None if x["z"] is None else _empty_like_kernel(x["z"]),
        "A": torch.empty(batch, dim, n), "D": torch.empty(batch, dim),
        "delta_bias": torch.empty(batch, dim), "state": torch.empty(batch, dim, n),
    }
    groups = _split(0, dim, GRAD_GROUPS)  # fixed by dim alone, so results are deterministic
    dB_parts = torch.zeros(batch, len(groups), length, n)
    dC_parts = torch.zeros(batch, len(groups), length, n)
    args = _GradArgs(
        fwd=_args(x, softplus, None, None), dy=_seq(dy), du=_seq(grads["u"]), ddelta=_seq(grads["delta"]),
        dz=_seq(grads["z"]), dlast_state=_ptr(dlast_state), dA=_ptr(grads["A"]), dD=_ptr(grads["D"]),
        ddelta_bias=_ptr(grads["delta_bias"]), dstate=_ptr(grads["state"]),
    )
    lib = _lib()
    calls = [(lib.scan_backward, ctypes.byref(args), b * dim + start, b * dim + stop,
              dB_parts[b, g].data_ptr(), dC_parts[b, g].data_ptr())
             for b in range(batch) for g, (start, stop) in enumerate(groups)]
    if any(_run(calls)):
        raise MemoryError("the fused scan backward could not allocate its workspace")
    n_true = x["n"]
    grads["B"] = _sum_in_order(dB_parts, 1)[..., :n_true].transpose(1, 2)
    grads["C"] = _sum_in_order(dC_parts, 1)[..., :n_true].transpose(1, 2)
    for name in ("A", "D", "delta_bias"):
        grads[name] = _sum_in_order(grads[name], 0)
    grads["A"], grads["state"] = grads["A"][..., :n_true], grads["state"][..., :n_true]
    return grads


_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "softplus", "state")


class _FusedScan(torch.autograd.Function):
    """The fused scan with its exact backward (the C kernel recomputes the forward states)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, state):
        ctx.softplus = softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, state)
        y, last_state = _forward(_kernel_inputs(u, delta, A, B, C, D, z, delta_bias, state), softplus)
        return y.to(u.dtype), last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dlast_state):
        u, delta, A, B, C, D, z, delta_bias, state = saved = ctx.saved_tensors
        x = _kernel_inputs(u, delta, A, B, C, D, z, delta_bias, state)
        grads = _backward(x, ctx.softplus, dy, dlast_state)
        inputs = dict(zip(_INPUTS, saved[:8] + (None, saved[8])))
        return tuple(
            grads[name].to(t.dtype) if t is not None and needed else None
            for (name, t), needed in zip(inputs.items(), ctx.needs_input_grad)
        )


def selective_scan_cpu_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, state=None):
    """Same signature and shapes as `hybrid_mllm.core.scan.selective_scan`, on CPU tensors.

    u, delta, z: (batch, D, L)  A: (D, N)  B, C: (batch, N, L)  D, delta_bias: (D,)
    state: (batch, D, N) -> y: (batch, D, L) in u's dtype, last_state: (batch, D, N) float32.
    Any strides; float32 and bfloat16 are read in place, other dtypes through a float32 copy.
    """
    inputs = (u, delta, A, B, C, D, z, delta_bias, softplus, state)
    if torch.is_grad_enabled() and any(torch.is_tensor(t) and t.requires_grad for t in inputs):
        return _FusedScan.apply(*inputs)
    y, last_state = _forward(_kernel_inputs(u, delta, A, B, C, D, z, delta_bias, state), softplus)
    return y.to(u.dtype), last_state


CPU_FUSED = ScanKernel(
    fn=selective_scan_cpu_fused, priority={"cpu": 100}, available=available,
    description="fused C kernel compiled on first use, threads over channels, exact backward (CPU)",
)
