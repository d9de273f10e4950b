"""Does the order in which a decode product reads W decide its speed? (gemv_cpu.c, issue 20)

A one-row product y = x W^T is bound by reading W. ``gemv_cpu.c`` reads W once, in order: one
row after another. This probe times it against the order it replaced, eight rows of W read side
by side (each step one vector from each of eight rows, sharing one load of x), written here in
a few lines of C and built with the same compiler and flags. Both run on one thread, on the
same W, at the decode models' shapes; "memory" rotates over copies of W filling 256 MiB (none
stays in cache: what a decode step meets), "cache" repeats one copy. Both orders' results are
checked against a float64 product first.

    python benchmarks/probe_gemv_order.py
    python benchmarks/probe_gemv_order.py --rows 1 4 --shapes 4096x1024 1024x4096
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hybrid_mllm.core.cli import check_at_least_one, run_cli
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.plugins.mixers import gemv_cpu
from hybrid_mllm.plugins.mixers.scan_cpu import FLAGS, find_compiler

# The replaced order: eight rows of W side by side, x's vector loaded once per step for all eight.
SIDE_BY_SIDE = r"""
#include <immintrin.h>
#include <stdint.h>
#define DOT8(T, STEP, LOADX, MUL)                                                          \
    for (int64_t n = 0; n < N; n += 8)                                                     \
        for (int64_t m = 0; m < M; m++) {                                                  \
            __m512 acc[8];                                                                 \
            for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();                      \
            for (int64_t k = 0; k + STEP <= K; k += STEP) {                                \
                const T xv = LOADX(x + m * K + k);                                         \
                for (int r = 0; r < 8; r++) acc[r] = MUL(xv, w + (n + r) * K + k, acc[r]); \
            }                                                                              \
            for (int r = 0; r < 8; r++) y[m * N + n + r] = _mm512_reduce_add_ps(acc[r]);  \
        }
#define F32_MUL(xv, p, a) _mm512_fmadd_ps(xv, _mm512_loadu_ps(p), a)
#define BF16_LOAD(p) ((__m512bh)_mm512_loadu_si512(p))
#define BF16_MUL(xv, p, a) _mm512_dpbf16_ps(a, xv, BF16_LOAD(p))
void side_by_side_f32(const float *x, const float *w, float *y, int64_t M, int64_t N, int64_t K) {
    DOT8(__m512, 16, _mm512_loadu_ps, F32_MUL)
}
#ifdef __AVX512BF16__
void side_by_side_bf16(const uint16_t *x, const uint16_t *w, float *y, int64_t M, int64_t N, int64_t K) {
    DOT8(__m512bh, 32, BF16_LOAD, BF16_MUL)
}
#endif
"""


def _build_reference(folder: Path, dtypes: list[torch.dtype]) -> ctypes.CDLL:
    """The side-by-side loops, for `dtypes` (those whose gemv_cpu kernel is built here)."""
    source, lib = folder / "side_by_side.c", folder / "side_by_side.so"
    source.write_text(SIDE_BY_SIDE)
    subprocess.run([find_compiler(), *FLAGS, str(source), "-o", str(lib)], check=True)
    ref = ctypes.CDLL(str(lib))
    for dtype in dtypes:
        getattr(ref, _REFERENCE[dtype]).argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3
    return ref


_REFERENCE = {torch.float32: "side_by_side_f32", torch.bfloat16: "side_by_side_bf16"}


def _seconds(call, weights: list[torch.Tensor], repeats: int = 7) -> float:
    """Best of `repeats` passes over `weights`, seconds per product."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in weights:
            call(w)
        best = min(best, (time.perf_counter() - t0) / len(weights))
    return best


def probe(ref: ctypes.CDLL, dtype: torch.dtype, rows: int, N: int, K: int) -> str:
    lib, name = gemv_cpu._load_library(), gemv_cpu.KERNELS[dtype][0]
    copies = max(1, (256 << 20) // (N * K * dtype.itemsize))
    weights = [torch.randn(N, K).to(dtype) for _ in range(copies)]
    x = torch.randn(rows, K).to(dtype)
    y_ours, y_ref = torch.empty(rows, N, dtype=dtype), torch.empty(rows, N)
    ref_fn = getattr(ref, _REFERENCE[dtype])

    def ours(w):
        getattr(lib, name)(x.data_ptr(), w.data_ptr(), None, y_ours.data_ptr(), rows, N, K, 0, N)

    def side_by_side(w):
        ref_fn(x.data_ptr(), w.data_ptr(), y_ref.data_ptr(), rows, N, K)

    exact = x.double() @ weights[0].double().T
    ours(weights[0]), side_by_side(weights[0])
    tol = 1e-3 if dtype == torch.float32 else 2e-2 * exact.abs().max().item()
    for label, y in (("gemv_cpu", y_ours), ("side by side", y_ref)):
        err = (y.double() - exact).abs().max().item()
        if err > tol:
            raise SystemExit(f"{label} differs from the float64 product by {err:.3g} (> {tol:.3g})")
    size, cells = N * K * dtype.itemsize, []
    for ws in (weights, weights[:1] * 8):  # memory, cache
        a, b = _seconds(side_by_side, ws), _seconds(ours, ws)
        cells.append(f"{size / a / 1e9:5.1f} | {size / b / 1e9:5.1f} | {a / b:.2f}x")
    return f"{str(dtype)[6:]} | {N}x{K} | {rows} | " + " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4], help="rows of x (default 1 4)")
    p.add_argument("--shapes", nargs="+", default=["1024x256", "256x512", "4096x1024", "1024x4096"],
                   help="W's N x K, N a multiple of 8 and K of 32 (default: the small and large decode "
                        "models' products)")
    args = p.parse_args(argv)
    check_at_least_one(*(("--rows", rows) for rows in args.rows))
    shapes = [_shape(p, text) for text in args.shapes]
    for dtype in (torch.float32, torch.bfloat16):
        if (why := gemv_cpu.available(dtype)) is not None:
            print(f"skipping {dtype}: {why}", file=sys.stderr)
    dtypes = [d for d in (torch.float32, torch.bfloat16) if gemv_cpu.available(d) is None]
    if not dtypes:
        raise HybridError("neither of gemv_cpu's kernels is built here: nothing to compare")
    torch.set_num_threads(1)
    print("one thread; GB/s of W read; ratio = side-by-side time / gemv_cpu time")
    print("dtype | W | rows | memory: side by side | gemv_cpu | ratio | cache: side by side | gemv_cpu | ratio")
    print("-|-|-|-|-|-|-|-|-")
    with tempfile.TemporaryDirectory() as folder:
        ref = _build_reference(Path(folder), dtypes)
        for dtype in dtypes:
            for N, K in shapes:
                for rows in args.rows:
                    print(probe(ref, dtype, rows, N, K), flush=True)
    return 0


def _shape(p: argparse.ArgumentParser, text: str) -> tuple[int, int]:
    """'NxK' -> (N, K), or a usage error naming what is wrong."""
    try:
        N, K = (int(part) for part in text.lower().split("x"))
    except ValueError:
        p.error(f"--shapes {text!r}: give N x K as two integers, e.g. 4096x1024")
    if N < 8 or K < 32 or N % 8 or K % 32:
        p.error(f"--shapes {text}: the side-by-side reference needs N a multiple of 8 and K of 32")
    return N, K


if __name__ == "__main__":
    sys.exit(run_cli(main))
