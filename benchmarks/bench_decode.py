"""CPU decode speed: tokens/s and ms per step, the one-token paths against the general forward.

For each size (`decode_models`: small 15.6M, large ~366M), dtype, context and batch size B,
one prompt of `context` random tokens is prefilled and its state copied B times; then B
sequences step together. Three paths run interleaved, each continuing its own state,
`--repeats` times `--steps` steps; the figures are medians and the ratios are against the
fast path: ``blocks`` (the fast path with the fused block steps: norm + mixer or FFN +
residual in one C call, all blocks in one call where it takes them), ``fast`` (fused Mamba
step, in-place KV cache, direct MoE loop, few-row linear kernels) and ``generic`` (`decode_paths(fast=False)`, the code before them).
Per-step ms at 512 and 8k context show what the longer context costs, beside the time the
attention layer's step took (forward hooks: 0 where a fused step ran it, with no module call
to hook) and the KV bytes it reads.

    python benchmarks/bench_decode.py                                  # everything (several minutes)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_decode.py --sizes small --contexts 512 --batches 1 \
        --threads 1,2 --paths blocks,fast
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from decode_models import SIZES, jamba, parameters

from hybrid_mllm.core.decode import decode_paths
from hybrid_mllm.core.model import HybridLM
from hybrid_mllm.plugins.mixers.attention import Attention

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# blocks: the fast path with the fused block steps; fast: without them; generic: neither
PATHS = ("blocks", "fast", "generic")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _paths(text: str) -> str:
    """--paths: a comma-separated subset of `PATHS`; anything else is a usage error naming it."""
    unknown = set(text.split(",")) - set(PATHS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(sorted(unknown))}: expected some of {', '.join(PATHS)}")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated: small, large")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument("--contexts", type=_ints, default=[512, 8192], help="prefill lengths (default 512,8192)")
    p.add_argument("--batches", type=_ints, default=[1, 4, 16], help="sequences stepping together (default 1,4,16)")
    p.add_argument("--threads", type=_ints, default=[torch.get_num_threads()], help="torch threads, interleaved")
    p.add_argument("--steps", type=int, default=6, help="decode steps per timing (default 6)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timings per path, median (default 3)")
    p.add_argument("--paths", type=_paths, default=",".join(PATHS), help=f"comma-separated: {', '.join(PATHS)}")
    p.add_argument("--json", help="also write the rows here")
    return p


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _prefill(lm: HybridLM, context: int):
    ids = torch.randint(0, lm.embed.num_embeddings, (1, context), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return lm.prefill(ids, chunk_size=4096).state


def _replicate(state, batch: int):
    """The one-sequence state as `batch` identical sequences (fresh tensors)."""
    return tuple(tuple(t.repeat(batch, *([1] * (t.dim() - 1))) for t in layer) for layer in state)


class _AttentionClock:
    """Seconds spent in attention mixers, through forward hooks."""

    def __init__(self, lm: HybridLM):
        self.spent, self._start = 0.0, 0.0
        self.hooks = [h for b in lm.blocks if isinstance(b.mixer, Attention) for h in (
            b.mixer.register_forward_pre_hook(lambda *a: setattr(self, "_start", time.perf_counter())),
            b.mixer.register_forward_hook(lambda *a: setattr(self, "spent", self.spent + time.perf_counter() - self._start)))]

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _run_steps(lm: HybridLM, state, steps: int, path: str, clock: _AttentionClock):
    """`steps` decode steps of the whole batch -> (ms per step, CPU ms per step (all threads),
    attention ms per step, state). On a loaded machine CPU time shows the work done, wall
    time also the waits for descheduled threads."""
    token = torch.ones(state[0][0].shape[0], 1, dtype=torch.long)
    clock.spent = 0.0
    with torch.no_grad(), decode_paths(fast=path != "generic", blocks=path == "blocks"):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            state = lm(token, state=state).state
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return 1e3 * wall / steps, 1e3 * cpu / steps, 1e3 * clock.spent / steps, state


def _kv_bytes(lm: HybridLM, state) -> int:
    """Bytes of the attention layers' k and v caches in `state` (read once per step)."""
    return sum(layer[0].nbytes + layer[1].nbytes for b, layer in zip(lm.blocks, state, strict=True)
               if isinstance(b.mixer, Attention))


def measure(lm: HybridLM, state, batch: int, args) -> list[dict]:
    """Interleaved timings of both paths (and thread counts) from copies of `state`."""
    clock = _AttentionClock(lm)
    chains = {(path, threads): _replicate(state, batch) for path in args.paths.split(",") for threads in args.threads}
    times = {key: [] for key in chains}
    saved_threads = torch.get_num_threads()
    try:
        for key in list(chains):  # warm-up: kernel builds, first KV buffers with room
            torch.set_num_threads(key[1])
            *_, chains[key] = _run_steps(lm, chains[key], 1, key[0], clock)
        for _ in range(args.repeats):
            for key in list(chains):
                torch.set_num_threads(key[1])
                ms, cpu_ms, attn_ms, chains[key] = _run_steps(lm, chains[key], args.steps, key[0], clock)
                times[key].append((ms, attn_ms, cpu_ms))
    finally:
        torch.set_num_threads(saved_threads)
        clock.remove()
    kv = _kv_bytes(lm, state) * batch
    return [{"path": path, "threads": threads, "batch": batch, "step_ms": statistics.median(t[0] for t in runs),
             "attention_ms": statistics.median(t[1] for t in runs), "cpu_ms": statistics.median(t[2] for t in runs),
             "kv_bytes": kv,
             "tok_s": batch * 1e3 / statistics.median(t[0] for t in runs)} for (path, threads), runs in times.items()]


def _print(size: str, dtype: str, context: int, rows: list[dict]) -> None:
    base = "fast" if any(r["path"] == "fast" for r in rows) else rows[0]["path"]
    baseline = {(r["threads"], r["batch"]): r["step_ms"] for r in rows if r["path"] == base}
    for r in rows:
        ratio = baseline[r["threads"], r["batch"]] / r["step_ms"]
        print(f"| {size} | {dtype} | {context} | {r['batch']} | {r['threads']} | {r['path']} | {r['step_ms']:.2f} | "
              f"{r['tok_s']:.1f} | {r['cpu_ms']:.2f} | {r['attention_ms']:.2f} | {r['kv_bytes'] / 2**20:.1f} | {ratio:.2f}x |",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    print(f"start: {_uptime()}; torch {torch.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print("| size | dtype | context | B | threads | path | ms/step | tok/s | CPU ms/step | attention ms/step | KV MiB | fast / path |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for size in args.sizes.split(","):
        for dtype in args.dtypes.split(","):
            lm = jamba(size, dtype=DTYPES[dtype])
            for context in args.contexts:
                state = _prefill(lm, context)
                for batch in args.batches:
                    rows = measure(lm, state, batch, args)
                    _print(size, dtype, context, rows)
                    results += [{"size": size, "parameters": parameters(lm), "dtype": dtype, "context": context, **r}
                                for r in rows]
    print(f"end: {_uptime()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
