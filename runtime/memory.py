"""Peak memory of a chunked prefill, estimated before it runs, so that a request which would
not fit is refused with a fix instead of the process being OOM-killed.

For a batch of B prompts of L tokens prefilled C = min(chunk, L) tokens at a time, with
element size s (4 for float32, 2 for bf16/fp16), the memory added on top of the weights
and the input embeddings is about

    state        sum over layers of the final state: a growing state (attention's K, V and
                 key mask) costs its bytes per token x B x L; a fixed one (Mamba's conv and
                 ssm states) its init_state size
    cache growth the largest growing state once more (torch.cat copies it at every chunk),
                 times (1 + n_head / n_kv_head) for attention (the K, V repeated for GQA)
    mask         B x C x L x (1 + s): the (B, 1, C, L) bool mask of a chunk over the cache,
                 and its additive form inside scaled_dot_product_attention
    activations  ACTIVATION_COPIES x B x C x w x 4, w the widest projection of a block
                 (Mamba's in_proj: 4 x d_model): the fp32 scan operands and their neighbours
    logits       B x vocab x 4 (prefill keeps the last position's only)

Measured against the peak resident memory of real prefills (tests/test_memory.py) this is
within 0.5x-2x. Third-party mixers are covered through their `state_specs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hybrid_mllm.core.errors import ResourceError
from hybrid_mllm.core.model import HybridLM

ACTIVATION_COPIES = 6  # live (B, C, w) fp32 tensors while one block runs one chunk
GiB = 2**30


@dataclass
class PrefillMemory:
    """Estimated bytes of a prefill, by part."""

    state: int
    cache_growth: int
    mask: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.state + self.cache_growth + self.mask + self.activations + self.logits


def estimate_prefill(lm: HybridLM, batch: int, length: int, chunk: int) -> PrefillMemory:
    """Bytes a prefill of `batch` x `length` tokens in chunks of `chunk` adds (see the module doc)."""
    chunk = min(chunk, length)
    itemsize = lm.embed.weight.element_size()
    state, growth, attends = 0, 0, False
    for block in lm.blocks:
        per_token, fixed = _state_bytes(block.mixer, batch, lm.embed.weight.dtype)
        state += per_token * length + fixed
        if per_token:
            attends = True
            groups = _query_groups(block.mixer)
            growth = max(growth, int(per_token * length * (1 + groups)))
    width = max((m.out_features for m in lm.blocks.modules() if isinstance(m, nn.Linear)), default=lm.embed.embedding_dim)
    return PrefillMemory(
        state=state,
        cache_growth=growth,
        mask=batch * chunk * length * (1 + itemsize) if attends else 0,
        activations=ACTIVATION_COPIES * batch * chunk * width * 4,
        logits=batch * lm.embed.num_embeddings * 4,
    )


def _query_groups(mixer: nn.Module) -> float:
    """n_head / n_kv_head of the mixer or of a module inside it (a `parallel` mixer's attention
    part), the largest if several; 1 when none has them."""
    return max((m.n_head / m.n_kv_head for m in mixer.modules() if hasattr(m, "n_head") and hasattr(m, "n_kv_head")),
               default=1.0)


def _state_bytes(mixer: nn.Module, batch: int, default_dtype: torch.dtype) -> tuple[int, int]:
    """(bytes per token of the state's growing tensors, bytes of its fixed-size ones), from
    `init_state` on the meta device: a growing tensor has 0 along its `seq_dim`. The state's
    dtype is the mixer's parameters' (`default_dtype`, the model's, for a mixer without any)."""
    param = next(mixer.parameters(), None)
    dtype = default_dtype if param is None else param.dtype
    tensors = mixer.init_state(batch, device="meta", dtype=dtype)
    per_token, fixed = 0, 0
    for spec, t in zip(mixer.state_specs, tensors):
        if spec.seq_dim is None:
            fixed += t.numel() * t.element_size()
        else:
            shape = list(t.shape)
            shape[spec.seq_dim] = 1
            per_token += int(torch.Size(shape).numel()) * t.element_size()
    return per_token, fixed


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Free memory for new allocations: on CUDA the GPU's free memory plus what PyTorch's caching
    allocator holds unused (reserved, not allocated: reused before the GPU is asked for more); on
    the CPU the least of MemAvailable and the cgroup's limit minus its usage (a container is
    killed at its limit)."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        import psutil

        free = psutil.virtual_memory().available
    except ImportError:
        free = _meminfo_available()
    return min(free, _cgroup_free())


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 2**62  # not Linux: no figure to go by, so no refusal


def _cgroup_free(root: Path = Path("/sys/fs/cgroup")) -> int:
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit != "max":  # usage can exceed a limit lowered under it: then nothing is free
            return max(0, int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return 2**62


def check_prefill_memory(lm: HybridLM, batch: int, length: int, chunk: int, *, available: int | None = None,
                         chunk_option: str = "--prefill-chunk") -> None:
    """Refuse (`ResourceError`) a prefill whose estimate exceeds the free memory (`available`,
    measured on the model's device when None), naming the largest chunk size that would fit."""
    need = estimate_prefill(lm, batch, length, chunk)
    if available is None:
        available = available_bytes(lm.embed.weight.device)
    if need.total <= available:
        return
    smaller = next((c for c in _halvings(min(chunk, length)) if estimate_prefill(lm, batch, length, c).total <= available),
                   None)
    fix = (f"use {chunk_option} {smaller}" if smaller else
           "even 1-token chunks would not fit: use fewer tiles (--max-tiles), frames (--max-frames) or a shorter prompt")
    if batch > 1:
        fix += ", or fewer prompts per batch"
    raise ResourceError(f"prefilling {batch} x {length:,} tokens needs about {need.total / GiB:.2f} GiB (state "
                        f"{need.state / GiB:.2f}, attention mask {need.mask / GiB:.2f}, activations "
                        f"{need.activations / GiB:.2f}) but {available / GiB:.2f} GiB is free: {fix}")


def _halvings(chunk: int):
    while chunk > 1:
        chunk //= 2
        yield chunk
