"""ONNX Runtime (CPU provider) vs PyTorch eager on the same model: prefill and per-token decode.

    python benchmarks/bench_onnx.py                       # jamba-small, random weights
    python benchmarks/bench_onnx.py --lengths 1024 --decode-tokens 32 --export-dir /tmp/js-onnx

The model (a preset, random weights) is saved as a checkpoint and exported with
``hybrid-export --onnx`` (the --scan flavour, standard by default; parity gate included)
unless --export-dir already holds an export of it. Both runtimes get the same random prompt
embeddings (batch 1) through the same `Decoder` API: prefill at each length, then greedy
decode steps after the first length's prefill. After a short warm-up, each prefill row is
the median of --repeats runs per runtime (alternating), decode the mean over its steps;
ratio = PyTorch time / ORT time (> 1: ONNX Runtime is faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import save_checkpoint
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.core.scan import auto_kernel_name
from hybrid_mllm.export.onnx import export_onnx
from hybrid_mllm.plugins.mixers.mamba import Mamba
from hybrid_mllm.runtime.generate import TorchDecoder
from hybrid_mllm.runtime.onnx import DEFAULT_PREFILL_CHUNK, load_onnx


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="jamba-small", help="preset or YAML config (random weights)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192], help="prefill lengths")
    p.add_argument("--decode-tokens", type=int, default=64, help="decode steps after the first prefill")
    p.add_argument("--torch-scan", default="auto", help="PyTorch's scan kernel (default: auto, the fastest here)")
    p.add_argument("--scan", choices=["standard", "custom"], default="standard",
                   help="export flavour: the scan in standard ONNX ops, or hybrid:: nodes run by the project's ops")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset of the export (default: the exporter's)")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK, help="ORT tokens per prefill call")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both runtimes (default: each runtime's own default, one per core)")
    p.add_argument("--export-dir", help="reuse (or create) the export here instead of a temporary directory")
    p.add_argument("--repeats", type=_positive, default=3,
                   help="timed prefills per length and runtime, alternating; the table gives medians")
    p.add_argument("--seed", type=int, default=0)
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _decode(decoder, logits, state, steps: int) -> float:
    """Seconds per token for `steps` greedy steps."""
    start = time.perf_counter()
    for _ in range(steps):
        logits, state = decoder.step(logits.argmax(-1, keepdim=True), state)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(resolve_config_path(args.config))
    model, tokenizer = build_mllm(config, seed=args.seed)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.export_dir) if args.export_dir else Path(tmp) / "onnx"
        if not (out / "manifest.json").exists():
            save_checkpoint(model, config, Path(tmp) / "ckpt", tokenizer=tokenizer)
            seconds, _ = _timed(lambda: export_onnx(Path(tmp) / "ckpt", out, flavour=args.scan, opset=args.opset,
                                                       log=lambda m: print(f"  {m}")))
            print(f"export + parity gate: {seconds:.0f} s")
        loaded = load_onnx(out, prefill_chunk=args.prefill_chunk, threads=args.threads)
        ort_decoder, ort_opset = loaded.decoder, loaded.manifest["opset"]
        for mamba in model.lm.modules():
            if isinstance(mamba, Mamba):
                mamba.impl = args.torch_scan
        torch_decoder = TorchDecoder(model.lm)
        scan = auto_kernel_name("cpu") if args.torch_scan == "auto" else args.torch_scan
        print(f"model {args.config} ({sum(p.numel() for p in model.lm.parameters()) / 1e6:.1f}M params), "
              f"torch {torch.__version__} eager (scan kernel '{scan}', {torch.get_num_threads()} threads), "
              f"ONNX Runtime CPU provider ({loaded.manifest['flavour']} scan, opset {ort_opset}, "
              f"prefill chunk {args.prefill_chunk}, {args.threads or 'default'} threads)")
        g = torch.Generator().manual_seed(args.seed)
        d_model = config.model.d_model
        warm = torch.randn(1, 32, d_model, generator=g)
        for decoder in (torch_decoder, ort_decoder):  # warm-up: allocators, ORT's first-run setup
            logits, state = decoder.prefill(warm, torch.ones(1, 32, dtype=torch.bool))
            decoder.step(logits.argmax(-1, keepdim=True), state)
        rows = []
        for i, length in enumerate(args.lengths):
            embeds, mask = torch.randn(1, length, d_model, generator=g), torch.ones(1, length, dtype=torch.bool)
            times_torch, times_ort = [], []
            for _ in range(args.repeats):  # alternating, so both see the same machine load
                t, (torch_logits, torch_state) = _timed(lambda: torch_decoder.prefill(embeds, mask))
                times_torch.append(t)
                t, (ort_logits, ort_state) = _timed(lambda: ort_decoder.prefill(embeds, mask))
                times_ort.append(t)
            rows.append((f"prefill {length:,} tokens", statistics.median(times_torch), statistics.median(times_ort),
                         "s"))
            if i == 0 and args.decode_tokens:
                per_torch = _decode(torch_decoder, torch_logits, torch_state, args.decode_tokens)
                per_ort = _decode(ort_decoder, ort_logits, ort_state, args.decode_tokens)
                rows.append((f"decode, per token (after {length:,})", per_torch, per_ort, "ms"))
        print(f"\n| {'':32} | {'PyTorch eager':>13} | {'ONNX Runtime':>12} | {'ratio':>6} |")
        print(f"|{'-' * 34}|{'-' * 15}:|{'-' * 14}:|{'-' * 7}:|")
        for name, t_torch, t_ort, unit in rows:
            scale = 1000.0 if unit == "ms" else 1.0
            print(f"| {name:32} | {t_torch * scale:10.3f} {unit:>2} | {t_ort * scale:9.3f} {unit:>2} | "
                  f"{t_torch / t_ort:5.2f}x |")


if __name__ == "__main__":
    main()
