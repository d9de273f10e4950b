"""SSD-scan (Mamba-2) speed on CPU: ref, chunked and the fused cpu kernel, from one run.

For each sequence length L (batch 1, H heads of headdim P, d_state N, ngroups G), every kernel
is timed forward and forward+backward (gradients of every input from ``y`` and the last
state): a warm-up of every call, then ``--repeats`` rounds calling each in turn, so that the
other jobs on the machine slow all of them alike; the median per call (one timed call when the
warm-up took over 2 s). ``ref``, a Python loop over time, is timed on its first
``--ref-tokens`` tokens (forward) and ``--ref-bwd-tokens`` (forward+backward) only, and its
times scaled linearly to L: the table says so where it does. Every other kernel's output on
those first tokens is compared with ref's (max |diff|).

The roofline is what this machine's ``torch.matmul`` does in the same run: one float32
matmul (m = n = k) of the FLOP count of the chunked form's matmuls at that L (its intra-chunk
scores and their product with x, the chunk states, the state passing, the outputs from the
states), timed the same way. "of roofline" is that time over the kernel's forward time.

    python benchmarks/bench_ssd.py                        # L = 1k, 4k, 16k (several minutes)
    python benchmarks/bench_ssd.py --lengths 512 --ref-tokens 256 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import torch

from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.testing.ssd_contract import ssd_inputs

SLOW_CALL_S = 2.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--d-state", type=int, default=128)
    p.add_argument("--ngroups", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--kernels", nargs="+", default=["ref", "chunked", "cpu"])
    p.add_argument("--ref-tokens", type=int, default=1024, help="ref's forward runs on at most this many tokens")
    p.add_argument("--ref-bwd-tokens", type=int, default=256, help="ref's forward+backward on at most this many")
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def interleaved(calls: dict, repeats: int) -> dict:
    """Seconds of one call of each of `calls` (key -> fn): after a warm-up of each, `repeats`
    rounds that call every fn once in turn, so that a change of the machine's load hits all of
    them alike; the median per fn (one timed call for a fn whose warm-up took over 2 s). A fn
    that raises (out of memory) gets the error's first line instead."""
    first, times = {}, {key: [] for key in calls}
    for key, fn in calls.items():
        start = time.perf_counter()
        try:
            fn()
        except (RuntimeError, MemoryError) as exc:
            first[key] = f"failed: {str(exc).splitlines()[0][:60]}"
            continue
        first[key] = time.perf_counter() - start
    for round_ in range(max(1, repeats)):
        for key, fn in calls.items():
            if isinstance(first[key], str) or (round_ > 0 and first[key] > SLOW_CALL_S):
                continue
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: first[key] if isinstance(first[key], str) else statistics.median(times[key]) for key in calls}


def chunked_flops(length: int, nheads: int, headdim: int, d_state: int, ngroups: int, chunk: int) -> float:
    """FLOPs of the chunked form's matmuls (multiply-add = 2) at sequence length `length`."""
    chunks = -(-length // chunk)
    padded = chunks * chunk
    scores = 2 * padded * chunk * d_state * ngroups  # C B^T per chunk and group
    diagonal = 2 * padded * chunk * headdim * nheads  # (C B^T o L) (dt x)
    states = 2 * padded * headdim * d_state * nheads  # chunk states
    passing = 2 * (chunks + 1) ** 2 * headdim * d_state * nheads  # state passing, all chunks at once
    outputs = 2 * padded * headdim * d_state * nheads  # outputs from the entering states
    return float(scores + diagonal + states + passing + outputs)


def forward_backward(fn, inputs: dict) -> None:
    leaves = {k: v.detach().requires_grad_() if torch.is_tensor(v) else v for k, v in inputs.items()}
    y, h = fn(**leaves)
    (y.sum() + h.sum()).backward()


def _prefix(inputs: dict, tokens: int) -> dict:
    return {k: v[:, :tokens] if k in ("x", "dt", "B", "C") else v for k, v in inputs.items()}


def measure(args: argparse.Namespace, length: int) -> list[dict]:
    """One row per kernel at `length` and one for the matmul; ref's times are scaled from its first tokens."""
    inputs = ssd_inputs(1, length, args.heads, args.headdim, args.ngroups, args.d_state, False, True, args.chunk_size)
    registry, calls, scale, rows = get_registry(), {}, {}, []
    ref_tokens = min(length, args.ref_tokens)
    with torch.no_grad():
        y_ref = registry.get("ssd_kernel", "ref").fn(**_prefix(inputs, ref_tokens))[0]
    for name in args.kernels:
        fn = registry.get("ssd_kernel", name).fn
        tokens = ref_tokens if name == "ref" else length
        bwd_tokens = min(length, args.ref_bwd_tokens) if name == "ref" else length
        calls[name, "fwd"] = functools.partial(_no_grad, fn, _prefix(inputs, tokens))
        calls[name, "fwdbwd"] = functools.partial(forward_backward, fn, _prefix(inputs, bwd_tokens))
        scale[name, "fwd"], scale[name, "fwdbwd"] = length / tokens, length / bwd_tokens
        with torch.no_grad():
            err = (fn(**_prefix(inputs, ref_tokens))[0] - y_ref).abs().max().item()
        rows.append({"L": length, "kernel": name, "err": err, "tokens": tokens, "bwd_tokens": bwd_tokens})
    flops = chunked_flops(length, args.heads, args.headdim, args.d_state, args.ngroups, args.chunk_size)
    m = max(1, round((flops / 2) ** (1 / 3)))  # one m x m x m matmul of about `flops`
    a, b = torch.randn(m, m), torch.randn(m, m)
    calls["matmul", "fwd"], scale["matmul", "fwd"] = functools.partial(torch.matmul, a, b), flops / (2 * m**3)
    seconds = interleaved(calls, args.repeats)
    for row in rows:
        for what in ("fwd", "fwdbwd"):
            t = seconds[row["kernel"], what]
            row[f"{what}_s"] = t if isinstance(t, str) else t * scale[row["kernel"], what]
    rows.append({"L": length, "kernel": "matmul roofline", "fwd_s": seconds["matmul", "fwd"] * scale["matmul", "fwd"],
                 "flops": flops})
    return rows


def _no_grad(fn, inputs: dict) -> None:
    with torch.no_grad():
        fn(**inputs)


def _s(value) -> str:
    return value if isinstance(value, str) else f"{value:.3f}"


def table(rows: list[dict]) -> str:
    lines = ["| L | kernel | forward s | x ref | forward+backward s | x ref | of roofline | max abs diff vs ref |",
             "|---|---|---|---|---|---|---|---|"]
    for L in dict.fromkeys(r["L"] for r in rows):
        at = {r["kernel"]: r for r in rows if r["L"] == L}
        ref, roof = at.get("ref"), at["matmul roofline"]
        for name, r in at.items():
            if name == "matmul roofline":
                lines.append(f"| {L} | torch.matmul of {r['flops'] / 1e9:.1f} GFLOP | {r['fwd_s']:.3f} | | | | 1 | |")
                continue
            note = "" if r["tokens"] == L else f" (scaled from {r['tokens']} / {r['bwd_tokens']} tokens)"
            fwd_x = f"{ref['fwd_s'] / r['fwd_s']:.1f}" if ref else ""
            bwd_x = f"{ref['fwdbwd_s'] / r['fwdbwd_s']:.1f}" if ref and not isinstance(r["fwdbwd_s"], str) else ""
            lines.append(f"| {L} | {name}{note} | {r['fwd_s']:.3f} | {fwd_x} | {_s(r['fwdbwd_s'])} | {bwd_x} | "
                         f"{roof['fwd_s'] / r['fwd_s']:.2f} | {r['err']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"# bench_ssd: H={args.heads} headdim={args.headdim} d_state={args.d_state} ngroups={args.ngroups} "
          f"chunk_size={args.chunk_size} batch=1 fp32; {torch.get_num_threads()} threads; "
          f"{platform.processor() or platform.machine()}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    rows = []
    for length in args.lengths:
        rows += measure(args, length)
        print(f"# L={length} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
