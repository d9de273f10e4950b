"""Linear layers with few rows: PyTorch's matmul against the decode kernel (`gemv_cpu`).

Per call, over `--weights` distinct weights (so each call reads a weight the previous one did
not), the two interleaved, medians of `--repeats`: wall time (what a decode step waits for,
OpenMP's thread wake-ups included) and CPU time (process time, all threads; less sensitive to a
loaded machine). This chose `gemv_cpu.MAX_ROWS` and `THREADED_BYTES`.

    python benchmarks/bench_linear.py                          # bfloat16, 4096 x 1024 and 1024 x 256
    python benchmarks/bench_linear.py --dtype float32 --shapes 1024x256,768x256,256x768,4096x1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from hybrid_mllm.plugins.mixers import gemv_cpu

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _ms_per_call(fn, weights, x, calls: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        for w in weights:
            fn(x, w)
    n = calls * len(weights)
    return 1e3 * (time.perf_counter() - wall) / n, 1e3 * (time.process_time() - cpu) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--shapes", default="4096x1024,1024x256", help="N x K of the weights")
    p.add_argument("--rows", default="1,2,4,8,16")
    p.add_argument("--weights", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    dtype = DTYPES[args.dtype]
    if gemv_cpu.available(dtype) is not None:
        raise SystemExit(gemv_cpu.available(dtype))
    print(f"{args.dtype}, load {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print("| N x K | rows | torch wall ms (CPU) | kernel wall ms (CPU) | torch / kernel, wall | CPU |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        weights = [torch.randn(n, k).to(dtype) for _ in range(args.weights)]
        for rows in map(int, args.rows.split(",")):
            x = torch.randn(rows, k).to(dtype)
            calls = max(1, 2_000_000 // (n * k))
            times = {"torch": [], "kernel": []}
            for _ in range(args.repeats):
                times["torch"].append(_ms_per_call(F.linear, weights, x, calls))
                times["kernel"].append(_ms_per_call(gemv_cpu.linear_few_rows, weights, x, calls))
            (tw, tc), (kw, kc) = ([statistics.median(column) for column in zip(*times[name])] for name in times)
            print(f"| {n} x {k} | {rows} | {tw:.3f} ({tc:.3f}) | {kw:.3f} ({kc:.3f}) | {tw / kw:.2f}x | {tc / kc:.2f}x |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
