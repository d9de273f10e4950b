"""Fused CPU decode step of the Mamba mixer: `step_cpu.c` compiled on first use, loaded with ctypes.

One C call per layer and token does the conv-state update, SiLU, x_proj with its split (and
Jamba's inner norms), dt_proj, softplus, the state update, the D skip and the gate: the work
between in_proj and out_proj, which in eager PyTorch is some thirty small ops. The build
reuses `scan_cpu`'s compiler discovery, flags and cache (keyed by source, compiler and CPU);
without a compiler `available` says why and the Mamba mixer keeps its eager step.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import platform
import subprocess
import threading
from pathlib import Path

import torch
from torch import Tensor

from hybrid_mllm.core.atomic import replacing

from .scan_cpu import (KERNEL_DTYPES, BuildError, _compiler_version, _cpu_id, _error_line, _first_line,
                       _run, _split, cache_dir, find_compiler, flags, local_headers)

SOURCE = Path(__file__).with_name("step_cpu.c")
_F32P = ctypes.POINTER(ctypes.c_float)
_VOIDP = ctypes.c_void_p


class StepArgs(ctypes.Structure):
    """Mirrors `StepArgs` in step_cpu.c."""

    _fields_ = [(name, _VOIDP) for name in ("xz", "conv_state", "new_conv_state", "ssm_state", "new_ssm_state",
                                              "y", "conv_w", "conv_b", "x_proj_w", "dt_norm_w", "B_norm_w",
                                              "C_norm_w", "dt_proj_w", "dt_bias", "A", "D", "work")] + [
        (name, ctypes.c_int64) for name in ("xz_stride", "batch", "d_inner", "d_conv", "dt_rank", "d_state")] + [
        ("norm_eps", ctypes.c_float), ("dtype", ctypes.c_int32)]


def build_library(compiler: str | None, cache: Path, source: Path = SOURCE, *, also: tuple[Path, ...] = ()) -> Path:
    """Compile `source` (and the C files `also`, linked into the same library) into `cache`
    once per sources, the headers they include, compiler, flags and CPU (atomic rename)."""
    if compiler is None:
        raise BuildError("no C compiler found (looked for $CC, cc, gcc, clang)")
    sources = (source, *also)
    files = [*sources, *sorted({h for s in sources for h in local_headers(s)})]
    key = hashlib.sha256(b"\0".join([
        *(f.read_bytes() for f in files), compiler.encode(), _compiler_version(compiler).encode(),
        " ".join(flags()).encode(), _cpu_id().encode(), platform.machine().encode(),
    ])).hexdigest()[:20]
    target = cache / f"{source.stem}_{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp:
        result = subprocess.run([compiler, *flags(), *map(str, sources), "-o", str(tmp), "-lm"],
                                capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise BuildError(f"{compiler} failed: {_error_line(result.stderr)}")
    return target


_load_lock = threading.Lock()


@functools.cache
def _load_library() -> ctypes.CDLL | str:
    try:
        lib = ctypes.CDLL(str(build_library(find_compiler(), cache_dir())))
    except (BuildError, OSError) as exc:
        return (f"the fused CPU decode step could not be built ({_first_line(str(exc))}); "
                f"install a C compiler (e.g. `apt install gcc`) or set $CC")
    lib.mamba_step.argtypes = [ctypes.POINTER(StepArgs), ctypes.c_int64, ctypes.c_int64]
    lib.mamba_step.restype = None
    return lib


def available() -> str | None:
    """None when the fused step is built and loaded, else a one-line reason."""
    with _load_lock:
        lib = _load_library()
    return lib if isinstance(lib, str) else None


class StepWeights:
    """The parameters as the C step reads them: contiguous float32 copies (A = -exp(A_log)),
    and a `StepArgs` whose weight fields point at them. Rebuilt by the mixer when a parameter
    changes (its version counter or storage)."""

    def __init__(self, mamba: torch.nn.Module):
        f32 = lambda t: None if t is None else t.detach().float().contiguous()
        norms = mamba.inner_norms
        self.tensors = {
            "conv_w": f32(mamba.conv_weight), "conv_b": f32(mamba.conv_bias), "x_proj_w": f32(mamba.x_proj.weight),
            "dt_norm_w": f32(mamba.dt_norm.weight) if norms else None,
            "B_norm_w": f32(mamba.B_norm.weight) if norms else None,
            "C_norm_w": f32(mamba.C_norm.weight) if norms else None,
            "dt_proj_w": f32(mamba.dt_proj.weight), "dt_bias": f32(mamba.dt_proj.bias),
            "A": -torch.exp(mamba.A_log.detach().float()), "D": f32(mamba.D),
        }
        self.args = StepArgs(d_inner=mamba.d_inner, d_conv=mamba.d_conv, dt_rank=mamba.dt_rank,
                             d_state=mamba.d_state, norm_eps=mamba.dt_norm.eps if norms else 0.0,
                             **{k: None if t is None else t.data_ptr() for k, t in self.tensors.items()})


def prepare_step(weights: StepWeights, xz: Tensor, conv_state: Tensor, ssm_state: Tensor):
    """The `StepArgs` of one call of `mamba_step` with its outputs allocated (shapes as in
    `mamba_step_cpu`) -> (args, y, new conv_state, new ssm_state, work); keep all alive until it ran."""
    a = StepArgs.from_buffer_copy(weights.args)  # a private copy: layers may step from several threads
    batch = xz.shape[0]
    conv_state, ssm_state = conv_state.contiguous(), ssm_state.contiguous()
    y = torch.empty(batch, a.d_inner, dtype=xz.dtype)
    new_conv, new_ssm = torch.empty_like(conv_state), torch.empty_like(ssm_state)
    work = torch.empty(batch, a.d_inner + a.dt_rank + 2 * a.d_state)
    a.xz, a.conv_state, a.new_conv_state = xz.data_ptr(), conv_state.data_ptr(), new_conv.data_ptr()
    a.ssm_state, a.new_ssm_state, a.y, a.work = ssm_state.data_ptr(), new_ssm.data_ptr(), y.data_ptr(), work.data_ptr()
    a.xz_stride, a.batch, a.dtype = xz.stride(0), batch, KERNEL_DTYPES[xz.dtype]
    return a, y, new_conv, new_ssm, (conv_state, ssm_state, work)


def mamba_step_cpu(weights: StepWeights, xz: Tensor, conv_state: Tensor, ssm_state: Tensor):
    """One token through the fused step.

    xz: (B, 2 * d_inner) in_proj's output, float32 or bfloat16, rows contiguous
    conv_state: (B, d_inner, d_conv - 1) xz's dtype  ssm_state: (B, d_inner, d_state) float32
    -> y: (B, d_inner) xz's dtype (before out_proj), new conv_state, new ssm_state.
    """
    a, y, new_conv, new_ssm, _alive = prepare_step(weights, xz, conv_state, ssm_state)
    batch, lib = xz.shape[0], _load_library()
    if batch == 1 or torch.get_num_threads() == 1:
        lib.mamba_step(ctypes.byref(a), 0, batch)
    else:
        _run([(lib.mamba_step, ctypes.byref(a), start, stop) for start, stop in _split(0, batch, torch.get_num_threads())])
    return y, new_conv, new_ssm
