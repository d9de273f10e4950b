"""How much of a small model's CPU decode step is dispatch rather than arithmetic?

Times decode steps of `jamba-small` (d_model 256) and of the same layout at ``--narrow``
width (d_model 16: almost nothing to compute, so its step is the per-op and per-call cost of
the ~700 torch operations and ~60 kernel calls a token), then the model's linear layers alone:
one `F.linear` per weight a step reads (the MoE's top-k experts only), over the same shapes, with
the weights the model holds. Rounds alternate; medians; ``--threads`` torch threads.

    python benchmarks/probe_decode_dispatch.py                     # 1 thread
    OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_decode_dispatch.py --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch
import torch.nn.functional as F

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.ffn import MoE
from hybrid_mllm.core.model import HybridLM
from hybrid_mllm.core.presets import resolve_config_path


def jamba_at(d_model: int) -> HybridLM:
    """`jamba-small`'s layout at width d_model (FFNs 3 x d_model, 2 query heads per KV head)."""
    config = load_config(resolve_config_path("jamba-small"))
    m = config.model
    ffns = {kind: {**options, "d_hidden": 3 * d_model} for kind, options in m.ffns.items()}
    mixers = {**m.mixers, "attention": {"n_head": max(2, d_model // 32), "n_kv_head": max(1, d_model // 128)}}
    config.model = dataclasses.replace(m, d_model=d_model, ffns=ffns, mixers=mixers)
    return build_model(config, seed=0).eval()


def step_weights(lm: HybridLM) -> list[torch.Tensor]:
    """The weights of every linear layer one decode step reads (top_k experts of each MoE)."""
    weights = []
    for block in lm.blocks:
        for part in (block.mixer, block.ffn):
            if isinstance(part, MoE):
                weights.append(part.router.weight)
                for expert in part.experts[:part.top_k]:
                    weights += [layer.weight for layer in (expert.gate, expert.up, expert.down)]
            elif part is not None:
                weights += [m.weight for m in part.modules() if isinstance(m, torch.nn.Linear)]
    return weights + [lm.lm_head.weight]


def step_ms(lm: HybridLM, steps: int) -> float:
    """Median wall ms of `steps` decode steps after a 512-token prefill."""
    ids = torch.randint(0, lm.embed.num_embeddings, (1, 512), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        out = lm.prefill(ids)
        state, token = out.state, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps):
            t0 = time.perf_counter()
            out = lm(token, state=state)
            times.append(time.perf_counter() - t0)
            state, token = out.state, out.logits[:, -1].argmax(-1, keepdim=True)
    return 1e3 * statistics.median(times[steps // 4:])


def linears_ms(weights: list[torch.Tensor], steps: int) -> float:
    """Median wall ms of one `F.linear` per weight, a 1-row input each."""
    inputs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    times = []
    with torch.no_grad():
        for _ in range(steps):
            t0 = time.perf_counter()
            for w in weights:
                F.linear(inputs[w.shape[1]], w)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[steps // 4:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--narrow", type=int, default=16, help="d_model of the narrow twin (default 16)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    wide, narrow = jamba_at(256), jamba_at(args.narrow)
    weights = step_weights(wide)
    mb = sum(w.nbytes for w in weights) / 2**20
    rows = {"jamba-small step (d_model 256)": [], f"same layout at d_model {args.narrow}": [],
            f"its {len(weights)} linear layers alone ({mb:.1f} MiB)": []}
    for _ in range(args.rounds):
        for (name, times), fn in zip(rows.items(), (lambda: step_ms(wide, args.steps), lambda: step_ms(narrow, args.steps),
                                                    lambda: linears_ms(weights, args.steps)), strict=True):
            times.append(fn())
    print(f"{args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"load {os.getloadavg()[0]:.2f}, medians of {args.rounds} rounds")
    for name, times in rows.items():
        print(f"  {name:<44} {statistics.median(times):6.2f} ms   (rounds: {', '.join(f'{t:.2f}' for t in times)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
