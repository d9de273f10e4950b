"""Hybrid (1 attention : 7 Mamba) vs its attention-only twin as visual tokens grow.

Both language models have the same width, depth and FFN (the shipped presets
``jamba-small`` and ``attention-small``). The visual tokens an image or a video becomes are
counted with the project's own anyres / frame arithmetic for a CLIP ViT-L/14-336 encoder
(576 tokens per 336 px tile) and a 2x2-pooling video connector (144 tokens + 1 separator per
frame); the LM prefill then runs on that many embeddings (the encoder's cost is the same
for both models and is left out). Each measurement runs in a fresh process so that its
peak memory (ru_maxrss above the process's size before the prefill) is its own.

    python benchmarks/bench_scaling.py --json benchmarks/scaling.json --plot benchmarks/scaling.png
    python benchmarks/bench_scaling.py --hybrid nemotron-h-small --sides 336 --frames 8 --contexts 8192
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TILE, TILE_TOKENS, FRAME_TOKENS = 336, 576, 145
IMAGE_SIDES = (336, 672, 1344, 2016, 2688, 4368)
FRAMES = (8, 32, 64, 128, 256)
MODELS = {"hybrid": "jamba-small", "attention": "attention-small"}


def image_tokens(side: int) -> int:
    from hybrid_mllm.core.vision import num_visual_tokens

    tiles = (side // TILE) ** 2
    return num_visual_tokens((side, side), TILE, 24, max_tiles=max(1, tiles), newline=True)


def _worker(preset: str, length: int, mode: str) -> dict:
    """Runs in a child process: one prefill (or decode step) and its time and peak memory."""
    import torch

    from hybrid_mllm.core.build import build_model
    from hybrid_mllm.core.config import load_config
    from hybrid_mllm.core.presets import resolve_config_path

    torch.manual_seed(0)
    model = build_model(load_config(resolve_config_path(preset)), seed=0).eval()
    d = model.embed.embedding_dim
    with torch.no_grad():
        if mode == "prefill":
            x = torch.randn(1, length, d)
            model(inputs_embeds=x[:, :64], num_logits=1)  # warm-up (kernel build, allocator)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            model.prefill(inputs_embeds=x, chunk_size=length, mask=None)
            seconds = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            return {"seconds": seconds, "peak_extra_mib": peak / 1024}
        state = _synthetic_state(model, length)
        token = torch.zeros(1, 1, dtype=torch.long)
        model(token, state=state)  # warm-up
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            model(token, state=state)
            times.append(time.perf_counter() - t0)
        cache = sum(t.numel() * t.element_size() for layer in state for t in layer)
        return {"seconds": sorted(times)[2], "cache_bytes": cache}


def _synthetic_state(model, context: int):
    """The state after `context` tokens, filled with random values (decode cost does not
    depend on the values): KV caches of length `context`, fixed-size Mamba states."""
    import torch

    state = []
    for block in model.blocks:
        layer = block.mixer.init_state(1)
        grown = []
        for spec, tensor in zip(block.mixer.state_specs, layer):
            shape = list(tensor.shape)
            if spec.seq_dim is not None:
                shape[spec.seq_dim] = context
            grown.append(torch.ones(shape, dtype=torch.bool) if tensor.dtype == torch.bool
                         else torch.randn(shape, dtype=tensor.dtype))
        state.append(tuple(grown))
    return tuple(state)


def measure(preset: str, length: int, mode: str, timeout: float) -> dict:
    code = f"import json, bench_scaling as b; print(json.dumps(b._worker({preset!r}, {length}, {mode!r})))"
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                           cwd=__import__("os").path.dirname(__file__) or ".")
    except subprocess.TimeoutExpired:
        return {"skipped": f"over {timeout:.0f} s"}
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", type=int, nargs="*", default=list(IMAGE_SIDES))
    p.add_argument("--frames", type=int, nargs="*", default=list(FRAMES))
    p.add_argument("--contexts", type=int, nargs="*", default=[8192, 32768, 100_000], help="decode context lengths")
    p.add_argument("--timeout", type=float, default=600, help="per measurement; longer ones are reported as skipped")
    p.add_argument("--hybrid", default=MODELS["hybrid"], help="the hybrid preset or YAML (default jamba-small; "
                                                                "e.g. nemotron-h-small)")
    p.add_argument("--twin", default=MODELS["attention"], help="its attention-only twin (default attention-small)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--plot", help="write a PNG plot here")
    args = p.parse_args(argv)
    MODELS.update(hybrid=args.hybrid, attention=args.twin)
    rows = [("image", f"{s}x{s}", image_tokens(s)) for s in args.sides]
    rows += [("video", f"{f} frames", f * FRAME_TOKENS) for f in args.frames]
    results = {"prefill": [], "decode": []}
    for kind, label, tokens in rows:
        entry = {"input": kind, "size": label, "tokens": tokens}
        for name, preset in MODELS.items():
            entry[name] = measure(preset, tokens, "prefill", args.timeout)
        results["prefill"].append(entry)
        _print_prefill(entry)
    for context in args.contexts:
        entry = {"context": context, **{name: measure(preset, context, "decode", args.timeout)
                                        for name, preset in MODELS.items()}}
        results["decode"].append(entry)
        _print_decode(entry)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        plot(results, args.plot)
    return 0


def _ratio(entry: dict, key: str) -> str:
    a, b = entry["attention"].get(key), entry["hybrid"].get(key)
    return f"{a / b:.1f}x" if a and b else "n/a"


def _print_prefill(e: dict) -> None:
    h, a = e["hybrid"], e["attention"]
    fmt = lambda r: f"{r['seconds']:8.2f} s {r['peak_extra_mib']:8.0f} MiB" if "seconds" in r else f"{next(iter(r.values())):>22}"  # noqa: E731
    print(f"prefill {e['input']:5s} {e['size']:>11s} {e['tokens']:>7,} tok | hybrid {fmt(h)} | attention {fmt(a)} | "
          f"speed-up {_ratio(e, 'seconds')}, memory {_ratio(e, 'peak_extra_mib')}", flush=True)


def _print_decode(e: dict) -> None:
    h, a = e["hybrid"], e["attention"]
    print(f"decode at {e['context']:>7,} context | hybrid {1000 * h.get('seconds', float('nan')):7.1f} ms/token, "
          f"cache {h.get('cache_bytes', 0) / 2**20:8.2f} MiB | attention {1000 * a.get('seconds', float('nan')):7.1f} ms/token, "
          f"cache {a.get('cache_bytes', 0) / 2**20:8.2f} MiB | cache ratio {_ratio(e, 'cache_bytes')}", flush=True)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, style in (("hybrid", "o-"), ("attention", "s--")):
        pts = [(e["tokens"], e[name]["seconds"], e[name]["peak_extra_mib"]) for e in results["prefill"] if "seconds" in e[name]]
        pts.sort()
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], style, label=name)
        dec = [(e["context"], e[name]["cache_bytes"] / 2**20) for e in results["decode"] if "cache_bytes" in e[name]]
        axes[2].plot([p[0] for p in dec], [p[1] for p in dec], style, label=name)
    for ax, title, ylabel in zip(axes, ("prefill time", "prefill peak extra memory", "decode cache size"),
                                 ("seconds", "MiB", "MiB")):
        ax.set(title=title, xlabel="tokens", ylabel=ylabel, xscale="log", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{MODELS['hybrid']} vs attention-only twin {MODELS['attention']}, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
