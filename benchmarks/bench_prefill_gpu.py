"""Hybrid (1 attention : 7 Mamba) vs its attention-only twin: prefill time on a GPU.

Same width, depth and FFN (the shipped presets ``jamba-small`` / ``attention-small``,
scaled by --width), bf16, one sequence of N token embeddings, the scan kernel chosen by
``impl: auto`` (Triton, or mamba-ssm when installed); attention runs PyTorch SDPA (flash).
Timed with CUDA events after a warm-up, median of --repeats; ratios printed per length.

    python benchmarks/bench_prefill_gpu.py --lengths 8192 32768 100000 --json prefill_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.core.scan import auto_kernel_name

MODELS = {"hybrid": "jamba-small", "attention": "attention-small"}


def time_prefill(model, length: int, d_model: int, repeats: int) -> float:
    x = torch.randn(1, length, d_model, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        model(inputs_embeds=x[:, :1024], num_logits=1)  # warm-up: kernel compilation
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(inputs_embeds=x, num_logits=1)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 100_000])
    p.add_argument("--width", type=int, default=1024, help="d_model of both models (default 1024)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"GPU {torch.cuda.get_device_name(0)}, scan kernel (auto): {auto_kernel_name('cuda')}, width {args.width}")
    models = {}
    for name, preset in MODELS.items():
        config = load_config(resolve_config_path(preset))
        config.model.d_model = args.width
        config.model.mlp["d_hidden"] = config.model.moe["d_hidden"] = 3 * args.width
        config.model.mixers["attention"]["n_head"] = args.width // 64
        models[name] = build_model(config, seed=0, device="cuda", dtype=torch.bfloat16).eval()
    rows = []
    for length in args.lengths:
        row = {"tokens": length}
        for name, model in models.items():
            try:
                row[name] = time_prefill(model, length, args.width, args.repeats)
            except torch.OutOfMemoryError:
                row[name] = None
                torch.cuda.empty_cache()
        ratio = row["attention"] / row["hybrid"] if row["attention"] and row["hybrid"] else None
        row["speedup"] = ratio
        rows.append(row)
        fmt = lambda v: f"{v * 1000:9.1f} ms" if v else "      OOM"  # noqa: E731
        print(f"{length:>8,} tokens | hybrid {fmt(row['hybrid'])} | attention {fmt(row['attention'])} | "
              f"hybrid speed-up {ratio:.2f}x" if ratio else f"{length:>8,} tokens | {row}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(0), "width": args.width, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
