"""How much does a decode step grow with the context, against its attention layers' KV read? (issue 20)

One random Jamba (`decode_models`: small or large) prefilled twice in one process, to
``--short`` and ``--long`` tokens; rounds of ``--steps`` decode steps alternate between the
two contexts, each round from its prefill's state, medians of the rounds. Printed per
context: the step's ms, the attention layers' cached K and V bytes, and the time to read
those bytes at this machine's streaming rate, measured in the same run (a float32 sum over
``--mib`` MiB, larger than the caches, on the same threads). The issue's target: the step
grows by no more than the long context's KV read.

    python benchmarks/probe_step_growth.py
    python benchmarks/probe_step_growth.py --size large --dtype float32 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from hybrid_mllm.core.cli import check_at_least_one, run_cli
from hybrid_mllm.plugins.mixers.attention import Attention

sys.path.insert(0, str(Path(__file__).parent))
from decode_models import SIZES, jamba  # this folder's helper, not a package


def stream_gbs(mib: int, rounds: int = 5) -> float:
    """GB/s of a float32 sum over `mib` MiB (the best of `rounds`): what the step's reads get."""
    buf = torch.ones(mib << 18)
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        buf.sum()
        best = max(best, buf.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def kv_bytes(lm, state) -> int:
    """Bytes of the K and V caches the attention layers read in a step from `state`."""
    total = 0
    for block, layer_state in zip(lm.blocks, state, strict=True):
        if isinstance(block.mixer, Attention):
            k, v = layer_state[0], layer_state[1]
            total += k.nbytes + v.nbytes
    return total


def steps_ms(lm, state, token, steps: int) -> tuple[float, tuple, torch.Tensor]:
    """The median ms of `steps` decode steps from `state` (left as it was: states are values),
    and the state and token after them."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = lm(token, state=state)
        times.append(time.perf_counter() - t0)
        state, token = out.state, out.logits[:, -1].argmax(-1, keepdim=True)
    return 1e3 * statistics.median(times), state, token


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=SIZES, default="small", help="decode_models' Jamba (default small)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="the model's weights and activations (default float32)")
    p.add_argument("--short", type=int, default=512, help="the short context (default 512)")
    p.add_argument("--long", type=int, default=8192, help="the long context (default 8192)")
    p.add_argument("--steps", type=int, default=50, help="decode steps per round (default 50)")
    p.add_argument("--rounds", type=int, default=10, help="rounds per context (default 10)")
    p.add_argument("--threads", type=int, default=2, help="torch and kernel threads (default 2)")
    p.add_argument("--mib", type=int, default=512, help="MiB read to measure the streaming rate (default 512)")
    args = p.parse_args(argv)
    check_at_least_one(("--short", args.short), ("--long", args.long), ("--steps", args.steps),
                       ("--rounds", args.rounds), ("--threads", args.threads), ("--mib", args.mib))
    torch.set_num_threads(args.threads)
    lm = jamba(args.size, dtype=getattr(torch, args.dtype))
    gen = torch.Generator().manual_seed(0)
    contexts = (args.short, args.long)
    starts, times = {}, {c: [] for c in contexts}
    with torch.inference_mode():
        for c in contexts:
            out = lm.prefill(torch.randint(0, lm.embed.num_embeddings, (1, c), generator=gen))
            starts[c] = (out.state, out.logits[:, -1].argmax(-1, keepdim=True))
            steps_ms(lm, *starts[c], 3)  # warm-up: the kernels' build and first plans
        for r in range(args.rounds):
            for c in (contexts if r % 2 else contexts[::-1]):
                times[c].append(steps_ms(lm, *starts[c], args.steps)[0])
        gbs = stream_gbs(args.mib)
    print(f"{args.size} {args.dtype}, {args.threads} threads, {args.rounds} rounds x {args.steps} steps; "
          f"streaming read {gbs:.1f} GB/s ({args.mib} MiB float32 sum)")
    print("context | step ms (median of rounds) | rounds' range | KV MiB read | KV read ms at that rate")
    print("-|-|-|-|-")
    rows = {}
    for c in contexts:
        kv = kv_bytes(lm, starts[c][0])
        rows[c] = (statistics.median(times[c]), kv / gbs / 1e6)
        print(f"{c} | {rows[c][0]:.3f} | {min(times[c]):.3f}-{max(times[c]):.3f} | {kv / 2**20:.2f} | {rows[c][1]:.3f}")
    growth, read = rows[args.long][0] - rows[args.short][0], rows[args.long][1]
    print(f"growth {args.short} -> {args.long}: {growth:+.3f} ms a step, against {read:.3f} ms to read the long "
          f"context's KV cache: {'within' if growth <= read else 'over'} it")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
