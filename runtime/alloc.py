"""Keep glibc from handing big freed blocks back to the OS between ops (CPU runtimes).

PyTorch's CPU tensors come from malloc. glibc serves a block above ``M_MMAP_THRESHOLD``
(128 KiB at start, raised on the fly to at most 32 MiB) with a fresh ``mmap`` and unmaps
it on free, and it returns the top of its heap to the OS past ``M_TRIM_THRESHOLD``. A
long prefill frees and re-allocates activations of tens of MiB every op, so each op's
output is fresh memory that the kernel zero-fills page by page (a minor page fault per
4 KiB); blocks above 32 MiB (a 1024-wide model's activations at 8k tokens) meet fresh
memory on every op, however long the process runs. Serving every block from the heap
(no ``mmap``) and never trimming it keeps freed blocks for the next op to reuse; the
price is that the process keeps its peak footprint until it exits
(benchmarks/probe_prefill_faults.py measures both sides).

``HYBRID_MLLM_MALLOC=system`` leaves glibc's defaults alone, and the weights where they were
loaded (no move onto huge pages: `huge_pages.py`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from hybrid_mllm.core.errors import ConfigError

ENV = "HYBRID_MLLM_MALLOC"
CHOICES = ("keep", "system")  # keep: the settings below; system: glibc's own defaults

# mallopt(3) parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4  # how many blocks may be mmapped at once: 0 = none (glibc still falls back to mmap
#                  when the heap cannot grow)
TRIM_NEVER = 2**31 - 1  # mallopt takes an int

_applied: str | None = None


def _libc():
    """The C library if it is glibc (has ``mallopt``), else None (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


def malloc_mode() -> str:
    """The allocator mode asked for by ``HYBRID_MLLM_MALLOC`` (default ``keep``)."""
    mode = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if mode not in CHOICES:
        problem = (f"{mode!r} is not allowed (allowed: {', '.join(CHOICES)}; keep: reuse freed memory, the default; "
                   "system: glibc's own settings)")
        raise ConfigError(f"environment variable {ENV}", [problem])
    return mode


def keep_freed_memory() -> str:
    """Apply the process-wide malloc settings once; returns what is in force.

    ``"keep"`` (applied now or before), ``"system"`` (turned off by the env var) or
    ``"unsupported"`` (not glibc: nothing to set).
    """
    global _applied
    mode = malloc_mode()
    if _applied is not None:
        return _applied
    if mode == "system":
        return mode
    libc = _libc()
    if libc is None:
        return "unsupported"
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_NEVER) == 1
    _applied = "keep" if ok else "unsupported"
    return _applied
