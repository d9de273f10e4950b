"""Peak memory of real prefills, for tests/test_memory.py: prints one JSON line per case.

    python _memory_probe.py PRESET B,L,C [B,L,C ...]

Each case resets the peak resident set (``/proc/self/clear_refs``, Linux), prefills random
embeddings and reports the peak minus the resident set before it (torch's CPU allocations
are invisible to tracemalloc, so the kernel's count is the measure). Run it with
MALLOC_MMAP_THRESHOLD_ set, so that large blocks are mapped and unmapped, not pooled.
"""

import ctypes
import gc
import json
import sys

import torch

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.runtime.generate import TorchDecoder


def status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(lm, batch: int, length: int, chunk: int) -> int:
    embeds = torch.randn(batch, length, lm.embed.embedding_dim)
    mask = torch.ones(batch, length, dtype=torch.bool)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, or the earlier cases' pages hide this one's
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak resident set := current
    TorchDecoder(lm, prefill_chunk=chunk).prefill(embeds, mask)
    return status("VmHWM") - before


if __name__ == "__main__":
    torch.set_num_threads(1)
    lm = build_mllm(load_config(resolve_config_path(sys.argv[1])), seed=0)[0].lm.eval()
    measure(lm, 1, 64, 64)  # warm up: kernel choice and build, allocator pools
    for case in sys.argv[2:]:
        b, length, chunk = map(int, case.split(","))
        print(json.dumps({"batch": b, "length": length, "chunk": chunk, "peak": measure(lm, b, length, chunk)}), flush=True)
