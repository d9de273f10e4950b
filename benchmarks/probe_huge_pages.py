"""Do the weights on huge pages (`runtime/huge_pages.py`) make a decode step faster? (issue 20)

Two parts, each an A/B in one process, rounds alternating A and B, medians of the rounds:

- *product*: a one-row bf16 product (`pool_cpu.c`'s ``pooled_gemv``, as the decode steps call
  it) over copies of a 4096 x 1024 weight filling ``--mib`` MiB, none of them in cache: the
  copies from malloc (4 KiB pages) against the same copies moved by `weights_on_huge_pages`;
  GB/s of weights read, on one thread and two.
- *step*: two copies of one random Jamba (`decode_models`: small or large), one left where
  malloc put it, one moved; per-token ms of decode steps after a 512-token prefill.

The system's share of huge pages (``AnonHugePages``) is printed: 0 kB means the kernel gave
none and the comparison is of 4 KiB pages against themselves.

    python benchmarks/probe_huge_pages.py
    python benchmarks/probe_huge_pages.py --sizes large --dtype float32 --rounds 10
"""

from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from hybrid_mllm.core.cli import check_at_least_one, run_cli
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.plugins.mixers import block_cpu
from hybrid_mllm.plugins.mixers.scan_cpu import KERNEL_DTYPES
from hybrid_mllm.runtime.huge_pages import thp_mode, weights_on_huge_pages

sys.path.insert(0, str(Path(__file__).parent))
from decode_models import jamba  # this folder's helper, not a package


def _anon_huge_kib() -> str:
    return re.search(r"AnonHugePages:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)


def _product_gbs(lib, weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, threads: int) -> float:
    lib.pool_set_threads(threads)
    n, k = weights[0].shape
    t0 = time.perf_counter()
    for w in weights:
        lib.pooled_gemv(x.data_ptr(), w.data_ptr(), None, y.data_ptr(), 1, n, k, KERNEL_DTYPES[w.dtype])
    return sum(w.nbytes for w in weights) / (time.perf_counter() - t0) / 1e9


def product(mib: int, rounds: int) -> None:
    lib = block_cpu._load_library()
    lib.pooled_gemv.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int32]
    copies = max(2, (mib << 20) // (4096 * 1024 * 2))
    forms = {name: nn.ParameterList(torch.randn(4096, 1024).to(torch.bfloat16) for _ in range(copies))
             for name in ("4 KiB pages", "huge pages")}
    print(f"product: {weights_on_huge_pages(forms['huge pages'])}; AnonHugePages {_anon_huge_kib()} kB")
    x, y = torch.randn(1, 1024).to(torch.bfloat16), torch.empty(1, 4096, dtype=torch.bfloat16)
    print("threads | 4 KiB pages GB/s | huge pages GB/s | huge / 4 KiB")
    print("-|-|-|-")
    for threads in (1, 2):
        rates = {name: [] for name in forms}
        for r in range(rounds):
            for name in (list(forms) if r % 2 else list(forms)[::-1]):
                rates[name].append(_product_gbs(lib, list(forms[name]), x, y, threads))
        small, huge = (statistics.median(rates[name]) for name in forms)
        print(f"{threads} | {small:.1f} | {huge:.1f} | {huge / small:.2f}x", flush=True)


def _step_ms(lm, state, steps: int) -> tuple[float, tuple]:
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state = lm(torch.tensor([[5 + i]]), state=state).state
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), state


def step(size: str, dtype: torch.dtype, rounds: int, steps: int) -> None:
    models = {"4 KiB pages": jamba(size, dtype=dtype), "huge pages": jamba(size, dtype=dtype)}
    moved = weights_on_huge_pages(models["huge pages"])
    print(f"step, {size} {str(dtype).removeprefix('torch.')}: {moved}; AnonHugePages {_anon_huge_kib()} kB")
    ids = torch.randint(3, 200, (1, 512), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        states = {name: lm.prefill(ids).state for name, lm in models.items()}
        times = {name: [] for name in models}
        for r in range(rounds):
            for name in (list(models) if r % 2 else list(models)[::-1]):
                ms, states[name] = _step_ms(models[name], states[name], steps)
                times[name].append(ms)
    small, huge = (statistics.median(times[name]) for name in models)
    ratios = sorted(a / b for a, b in zip(*times.values(), strict=True))
    print(f"4 KiB pages {small:.2f} ms, huge pages {huge:.2f} ms a token: 4 KiB / huge {small / huge:.2f}x "
          f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f})", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=512, help="MiB of weights for the product part (default 512; 0: skip)")
    p.add_argument("--sizes", nargs="*", choices=["small", "large"], default=["small", "large"],
                   help="models for the step part (default small large; none: skip)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="the models' (default bfloat16)")
    p.add_argument("--rounds", type=int, default=10, help="rounds per form, medians reported (default 10)")
    p.add_argument("--steps", type=int, default=0, help="decode steps per round (default: 40 small, 8 large)")
    args = p.parse_args(argv)
    check_at_least_one(("--rounds", args.rounds))
    if args.mib < 0 or args.steps < 0:
        raise HybridError("--mib and --steps must be >= 0 (0: skip the product part / the default step count)")
    if thp_mode() not in ("always", "madvise"):
        raise HybridError(f"this machine has no transparent huge pages to compare (setting: {thp_mode()})")
    for dtype in {*([torch.bfloat16] if args.mib else []), getattr(torch, args.dtype)}:
        if (why := block_cpu.available(dtype)) is not None:
            raise HybridError(f"the fused CPU steps are not available here: {why}")
    torch.set_num_threads(2)
    if args.mib:
        product(args.mib, args.rounds)
    for size in args.sizes:
        step(size, getattr(torch, args.dtype), args.rounds, args.steps or (40 if size == "small" else 8))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
