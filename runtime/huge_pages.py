"""A model's CPU weights on transparent huge pages (Linux), for decoding.

A CPU decode step reads every weight once, from memory: it is bound by how fast two threads
stream them. PyTorch's tensors come from malloc, on 4 KiB pages unless the kernel's THP
setting is "always" (it is "madvise" on most distributions): a TLB miss every 4 KiB of
weights. Measured on a 2-core AMD EPYC (THP "madvise", benchmarks/probe_huge_pages.py): a
one-row bf16 product over 512 MiB of 4096 x 1024 weights read 24.2 GB/s from 4 KiB pages and
27.9 from huge pages on one thread, 30.9 and 32.7 on two; a decode step of the 15.6M and the
366M Jamba 1.07x faster in bf16, 1.12x / 1.07x in fp32. llama.cpp gets the same from its
memory-mapped GGUF file (the page cache's large folios).

`weights_on_huge_pages` (called by hybrid-run, hybrid-serve and hybrid-eval) copies a
module's CPU parameters into one private anonymous mapping advised ``MADV_HUGEPAGE`` and
points them at it: values, dtypes, shapes, strides and the sharing between parameters (tied
weights, views of one storage) stay as they were, and the old memory goes back to the OS. It
does nothing where THP is off or not Linux, below one huge page of weights, or with
``HYBRID_MLLM_MALLOC=system`` (the allocator left to its defaults).
"""

from __future__ import annotations

import ctypes
import gc
import mmap
from pathlib import Path

import torch
from torch import nn

from .alloc import _libc, malloc_mode

HUGE_PAGE = 2 << 20  # x86-64's and arm64's (4 KiB base pages) transparent huge page
ALIGN = 64  # each storage starts on a cache line
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    """The kernel's THP setting ("always", "madvise" or "never"), None where there is none."""
    try:
        text = THP_SETTING.read_text()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def weights_on_huge_pages(module: nn.Module) -> str:
    """Move `module`'s CPU parameters onto huge pages; returns what was done ("huge pages")
    or why not."""
    if malloc_mode() == "system":
        return "not moved (HYBRID_MLLM_MALLOC=system)"
    mode = thp_mode()
    if mode not in ("always", "madvise") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return f"not moved (transparent huge pages: {mode or 'not available'})"
    storages: dict[int, tuple[torch.UntypedStorage, list[nn.Parameter]]] = {}
    for p in module.parameters():
        storage = p.untyped_storage()
        if p.device.type == "cpu" and storage.nbytes() > 0:
            storages.setdefault(storage.data_ptr(), (storage, []))[1].append(p)
    offsets, total = {}, 0
    for key, (storage, _) in storages.items():
        offsets[key] = total
        total += -(-storage.nbytes() // ALIGN) * ALIGN
    if total < HUGE_PAGE:
        return "not moved (under one huge page of weights)"
    try:
        arena = _huge_page_arena(total)
    except OSError as exc:
        return f"not moved (no mapping of {total / 2**20:.0f} MiB: {exc})"
    target = arena.untyped_storage()
    with torch.no_grad():
        for key, (storage, params) in storages.items():
            at = offsets[key]
            arena[at:at + storage.nbytes()].copy_(torch.empty(0, dtype=torch.uint8).set_(storage))
            for p in params:
                p.data = torch.empty(0, dtype=p.dtype).set_(target, at // p.element_size() + p.storage_offset(),
                                                             p.shape, p.stride())
    del storages
    gc.collect()  # the old storages can sit in reference cycles (modules' caches)
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)  # give their pages back: the heap never trims itself (alloc.keep_freed_memory)
    return "huge pages"


def _huge_page_arena(size: int) -> torch.Tensor:
    """`size` bytes (uint8) starting on a huge page boundary, in a private anonymous mapping
    advised MADV_HUGEPAGE; the tensor keeps the mapping alive."""
    mapping = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(mmap.MADV_HUGEPAGE)
    start = ctypes.c_char.from_buffer(mapping)
    pad = -ctypes.addressof(start) % HUGE_PAGE
    del start  # releases its export of the buffer
    return torch.frombuffer(mapping, dtype=torch.uint8, count=size, offset=pad)
