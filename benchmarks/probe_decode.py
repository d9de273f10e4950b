"""Where does a CPU decode step go? Per layer kind and per op, after a 512-token prefill.

Builds the issue's Jamba sizes (`decode_models`: small 15.6M, large ~366M), prefills
`--context` random tokens, then times decode steps: the whole step, each part of it
(attention and Mamba mixers, MLP and MoE FFNs, the rest: norms, embedding, head) through
forward hooks, and the top ops by self CPU time from torch.profiler.

    python benchmarks/probe_decode.py                       # small, fp32, 512 tokens
    python benchmarks/probe_decode.py --size large --dtype bfloat16 --steps 10
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import torch
from decode_models import SIZES, jamba, parameters
from torch.profiler import ProfilerActivity, profile

from hybrid_mllm.core.decode import decode_paths
from hybrid_mllm.core.model import HybridLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def prefill(lm: HybridLM, context: int, batch: int = 1):
    """The state after `context` random tokens, (B, 1) next token ids."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, lm.embed.num_embeddings, (batch, context), generator=gen)
    with torch.no_grad():
        out = lm.prefill(ids, chunk_size=4096)
    return out.state, out.logits[:, -1].argmax(-1, keepdim=True)


def step_ms(lm: HybridLM, state, token, steps: int) -> tuple[list[float], object]:
    """Wall time of each of `steps` decode steps (ms), and the state after them."""
    times = []
    with torch.no_grad():
        for _ in range(steps):
            t0 = time.perf_counter()
            out = lm(token, state=state)
            times.append((time.perf_counter() - t0) * 1e3)
            state, token = out.state, out.logits[:, -1].argmax(-1, keepdim=True)
    return times, state


def part_name(lm: HybridLM, module) -> str | None:
    for block in lm.blocks:
        if module is block.mixer:
            return f"mixer {type(module).__name__}"
        if module is block.ffn:
            return f"ffn {type(module).__name__}"
    return None


def by_part(lm: HybridLM, state, token, steps: int) -> tuple[dict[str, float], object]:
    """ms per step spent in each part, through forward hooks ('rest' = the remainder), and the state after.
    Measured with the fused block steps off: a block step runs its modules' work in one C call,
    with no module call for a hook to see."""
    spent, started = collections.defaultdict(float), {}
    hooks = []
    for block in lm.blocks:
        for module in (block.mixer, block.ffn):
            if module is None:
                continue
            name = part_name(lm, module)
            hooks.append(module.register_forward_pre_hook(lambda m, a: started.__setitem__(m, time.perf_counter())))
            hooks.append(module.register_forward_hook(
                lambda m, a, o, name=name: spent.__setitem__(name, spent[name] + time.perf_counter() - started[m])))
    try:
        with decode_paths(fast=True, blocks=False):
            times, state = step_ms(lm, state, token, steps)
        total = sum(times)
    finally:
        for hook in hooks:
            hook.remove()
    parts = {name: 1e3 * s / steps for name, s in sorted(spent.items())}
    parts["rest (embed, norms, residuals, head)"] = total / steps - sum(parts.values())
    parts["total"] = total / steps
    return parts, state


def op_table(lm: HybridLM, state, token, steps: int, rows: int) -> str:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_ms(lm, state, token, steps)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--context", type=int, default=512, help="prefill length (default 512)")
    p.add_argument("--steps", type=int, default=30, help="decode steps per measurement (default 30)")
    p.add_argument("--ops", type=int, default=20, help="rows of the op table (default 20)")
    args = p.parse_args(argv)
    lm = jamba(args.size, dtype=DTYPES[args.dtype])
    print(f"{args.size}: {parameters(lm) / 1e6:.1f}M parameters, {args.dtype}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}")
    state, token = prefill(lm, args.context)
    times, state = step_ms(lm, state, token, args.steps)  # warm-up (kernel builds, allocator)
    times, _ = step_ms(lm, state, token, args.steps)
    print(f"step after {args.context}: median {statistics.median(times):.2f} ms, min {min(times):.2f} ms")
    parts, state = by_part(lm, state, token, args.steps)
    for name, ms in parts.items():
        print(f"  {name:40s} {ms:8.3f} ms")
    print(op_table(lm, state, token, args.steps, args.ops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
