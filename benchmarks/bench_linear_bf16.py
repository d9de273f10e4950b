"""bfloat16 linear layers with few rows: PyTorch's matmul against the decode kernel (`gemv_cpu`).

CPU time per call (process time, less sensitive to a loaded machine than wall time), over
`--weights` distinct weights so they are read from memory rather than a core's cache; the two
run interleaved, medians of `--repeats`. This chose `gemv_cpu.MAX_ROWS`.

    python benchmarks/bench_linear_bf16.py                       # 4096 x 1024 and 1024 x 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from hybrid_mllm.plugins.mixers import gemv_cpu


def _cpu_ms(fn, weights, x, calls: int) -> float:
    t0 = time.process_time()
    for _ in range(calls):
        for w in weights:
            fn(x, w)
    return 1e3 * (time.process_time() - t0) / (calls * len(weights))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="4096x1024,1024x256", help="N x K of the weights")
    p.add_argument("--rows", default="1,2,4,8,16")
    p.add_argument("--weights", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if gemv_cpu.available() is not None:
        raise SystemExit(gemv_cpu.available())
    print(f"load {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads")
    print("| N x K | rows | torch ms | kernel ms | torch / kernel |\n|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        weights = [torch.randn(n, k).bfloat16() for _ in range(args.weights)]
        for rows in map(int, args.rows.split(",")):
            x = torch.randn(rows, k).bfloat16()
            calls = max(1, 2_000_000 // (n * k))
            times = {"torch": [], "kernel": []}
            for _ in range(args.repeats):
                times["torch"].append(_cpu_ms(F.linear, weights, x, calls))
                times["kernel"].append(_cpu_ms(gemv_cpu.linear_bf16, weights, x, calls))
            t, g = statistics.median(times["torch"]), statistics.median(times["kernel"])
            print(f"| {n} x {k} | {rows} | {t:.3f} | {g:.3f} | {t / g:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
