"""Where one prefill's time goes: seconds per kind of mixer and FFN, and the speed-up bound.

Forward hooks time every block's mixer and FFN (by class: Mamba, Mamba2, Attention, SwiGLU, MoE, ...)
during one prefill of random embeddings (batch 1, one call, after a 64-token warm-up);
"other" is the rest (norms, residual adds, the head). With two presets, the second is the
baseline and the table adds the bound on the first's speed-up that no faster Mamba could
beat: baseline time / (first's time without its Mamba mixers).

    python benchmarks/bench_breakdown.py --tokens 32768 jamba-small attention-small
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.presets import resolve_config_path


def breakdown(preset: str, tokens: int, seed: int = 0) -> tuple[float, dict[str, float]]:
    """(total seconds, seconds per module class) for one prefill of `tokens` tokens."""
    model = build_model(load_config(resolve_config_path(preset)), seed=seed).eval()
    spent: collections.Counter = collections.Counter()
    started: dict[int, float] = {}

    def before(module, args, kwargs):
        started[id(module)] = time.perf_counter()

    def after(module, args, kwargs, output):
        spent[type(module).__name__] += time.perf_counter() - started.pop(id(module))

    for block in model.blocks:
        for part in filter(None, (block.mixer, block.ffn)):
            part.register_forward_pre_hook(before, with_kwargs=True)
            part.register_forward_hook(after, with_kwargs=True)
    x = torch.randn(1, tokens, model.embed.embedding_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(inputs_embeds=x[:, :64], num_logits=1)  # warm-up (kernel build, allocator)
        spent.clear()
        start = time.perf_counter()
        model.prefill(inputs_embeds=x, chunk_size=tokens, mask=None)
        total = time.perf_counter() - start
    return total, dict(spent)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("presets", nargs="+", help="presets or YAML configs (random weights); the last is the baseline")
    p.add_argument("--tokens", type=int, default=32768, help="prefill length (default 32768)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {preset: breakdown(preset, args.tokens) for preset in args.presets}
    kinds = sorted({kind for _, parts in results.values() for kind in parts})
    print(f"{args.tokens:,} tokens, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| preset | total s | " + " | ".join(f"{k} s" for k in kinds) + " | other s |")
    print("|---|---:|" + "---:|" * (len(kinds) + 1))
    for preset, (total, parts) in results.items():
        cells = " | ".join(f"{parts.get(k, 0.0):.2f}" for k in kinds)
        print(f"| {preset} | {total:.2f} | {cells} | {total - sum(parts.values()):.2f} |")
    if len(args.presets) > 1:
        base_total = results[args.presets[-1]][0]
        total, parts = results[args.presets[0]]
        print(f"\n{args.presets[0]} vs {args.presets[-1]}: speed-up {base_total / total:.2f}x; "
              f"with Mamba mixers taking no time: "
              f"{base_total / (total - parts.get('Mamba', 0.0) - parts.get('Mamba2', 0.0)):.2f}x")


if __name__ == "__main__":
    main()
