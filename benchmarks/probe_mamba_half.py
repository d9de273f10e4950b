"""One fused Mamba half of a decode step (RMSNorm, in_proj, the C step, out_proj, residual) on
one thread against two (issue 20).

With two threads `pool_cpu.c`'s worker takes part of each product's columns and, since the
step's channels are independent, part of the scan's channels (`step_cpu.c`, ``pooled_for``).
The half runs through `block_cpu`'s per-block step on one token from a random state, in bf16
or float32, rounds alternating one and two threads; medians of the rounds.

    python benchmarks/probe_mamba_half.py                      # d_model 256 and 1024, bf16
    python benchmarks/probe_mamba_half.py --d-model 1024 --dtype float32 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from hybrid_mllm.core.cli import check_at_least_one, run_cli
from hybrid_mllm.core.decode import decode_paths
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.model import Block
from hybrid_mllm.plugins.mixers import block_cpu
from hybrid_mllm.plugins.mixers.mamba import Mamba


def _us_per_call(block: Block, x: torch.Tensor, state, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        block(x, state)
    return 1e6 * (time.perf_counter() - t0) / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, nargs="+", default=[256, 1024],
                   help="widths (d_inner = 2 d_model; default 256 1024)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--rounds", type=int, default=9, help="rounds per thread count, medians reported (default 9)")
    p.add_argument("--calls", type=int, default=300, help="calls per round (default 300)")
    args = p.parse_args(argv)
    check_at_least_one(("--rounds", args.rounds), ("--calls", args.calls), *(("--d-model", d) for d in args.d_model))
    dtype = getattr(torch, args.dtype)
    if (why := block_cpu.available(dtype)) is not None:
        raise HybridError(f"the fused block steps are not available here: {why}")
    saved = torch.get_num_threads()
    print("d_model | d_inner | 1 thread us/call | 2 threads us/call | 1 / 2")
    print("-|-|-|-|-")
    try:
        for d in args.d_model:
            torch.manual_seed(0)
            block = Block(d, Mamba(d, dtype=dtype), None, dtype=dtype).eval()
            state = tuple(torch.randn(t.shape).to(t.dtype) for t in block.mixer.init_state(1, dtype=dtype))
            x = torch.randn(1, 1, d).to(dtype)
            times = {1: [], 2: []}
            with torch.no_grad(), decode_paths(fast=True):
                for threads in times:  # warm-up: the library build, the plans
                    torch.set_num_threads(threads)
                    _us_per_call(block, x, state, 20)
                for _ in range(args.rounds):
                    for threads in times:
                        torch.set_num_threads(threads)
                        times[threads].append(_us_per_call(block, x, state, args.calls))
            one, two = (statistics.median(times[t]) for t in (1, 2))
            print(f"{d} | {block.mixer.d_inner} | {one:.1f} | {two:.1f} | {one / two:.2f}x", flush=True)
    finally:
        torch.set_num_threads(saved)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
