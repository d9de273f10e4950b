"""TensorRT engine vs PyTorch eager on the same model and GPU: prefill and per-token decode.

    python benchmarks/bench_trt.py                                  # jamba-small, fp16, random weights
    python benchmarks/bench_trt.py --precision fp32 --lengths 1024 4096 --json out.json

The model (a preset, random weights) is saved as a checkpoint and built with the same code as
``hybrid-export --trt`` (custom-flavour ONNX, engine with AOT plugins, parity gate). Both
runtimes get the same random prompt embeddings (batch 1) through the same `Decoder` API:
prefill at each length, then greedy decode steps after the first length's prefill. PyTorch
runs on CUDA in the engine's precision (fp32, fp16 or bf16) with its fastest scan (``auto``).
Times are medians of --repeats runs after a warm-up, CUDA-synchronised; ratio = PyTorch time
/ TensorRT time (> 1: the engine is faster). Needs tensorrt and a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
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
from hybrid_mllm.export.trt.build import BuildOptions
from hybrid_mllm.export.trt.exporter import export_trt
from hybrid_mllm.runtime.generate import TorchDecoder
from hybrid_mllm.runtime.trt.engine import load_trt
from hybrid_mllm.runtime.trt.errors import import_tensorrt, require_cuda
from hybrid_mllm.runtime.trt.profiles import ProfileLimits

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="jamba-small", help="preset or YAML config (random weights)")
    p.add_argument("--precision", choices=list(DTYPES), default="fp16", help="engine and PyTorch precision")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192], help="prefill lengths (batch 1)")
    p.add_argument("--decode-tokens", type=int, default=64, help="decode steps after the first prefill")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    p.add_argument("--engine-dir", help="reuse (or create) the engine directory here instead of a temporary one")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--seed", type=int, default=0)
    return p


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up (and TensorRT's lazy context setup)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _decode(decoder, embeds, mask, steps: int) -> float:
    """Seconds per token of `steps` greedy steps after prefilling `embeds`."""
    logits, state = decoder.prefill(embeds, mask)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        logits, state = decoder.step(logits.argmax(-1, keepdim=True), state)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(steps, 1)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import_tensorrt()
    require_cuda()
    config = load_config(resolve_config_path(args.config))
    model, tokenizer = build_mllm(config, seed=args.seed)
    longest = max(args.lengths)
    # max batch 4: the parity gate's chains (batch up to 3) all run; timed rows are batch 1 (the optimum)
    limits = ProfileLimits(max_batch=4, max_seq=min(longest, 8192), max_past=longest + args.decode_tokens + 8)
    tmp = tempfile.TemporaryDirectory()
    engine_dir = Path(args.engine_dir) if args.engine_dir else Path(tmp.name) / "engine"
    if not (engine_dir / "engine.json").is_file():
        save_checkpoint(model, config, Path(tmp.name) / "ckpt", tokenizer=tokenizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            export_trt(Path(tmp.name) / "ckpt", engine_dir, options=BuildOptions(precision=args.precision, limits=limits),
                       cache_dir=Path(tmp.name) / "cache", log=print)
            print(f"export + engine build + parity gate: {time.perf_counter() - t0:.1f} s")
    trt_decoder = load_trt(engine_dir).decoder
    dtype = DTYPES[args.precision]
    torch_decoder = TorchDecoder(model.lm.to("cuda", dtype).eval())
    d_model = model.lm.embed.embedding_dim
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    print(f"{config.name}: {torch.cuda.get_device_name(0)}, {args.precision}, batch 1")
    print(f"{'kind':>8} {'tokens':>7} {'PyTorch ms':>11} {'TensorRT ms':>12} {'ratio':>6}")
    for i, length in enumerate(args.lengths):
        embeds = torch.randn(1, length, d_model, generator=g)
        mask = torch.ones(1, length, dtype=torch.bool)
        e_torch, m_cuda = embeds.to("cuda", dtype), mask.to("cuda")
        t_torch = _timed(lambda e=e_torch, m=m_cuda: torch_decoder.prefill(e, m), args.repeats)
        t_trt = _timed(lambda e=embeds, m=mask: trt_decoder.prefill(e, m), args.repeats)
        rows.append({"kind": "prefill", "tokens": length, "torch_ms": t_torch * 1e3, "trt_ms": t_trt * 1e3})
        if i == 0 and args.decode_tokens:
            d_torch = _decode(torch_decoder, e_torch, m_cuda, args.decode_tokens)
            d_trt = _decode(trt_decoder, embeds, mask, args.decode_tokens)
            rows.append({"kind": "decode", "tokens": args.decode_tokens, "torch_ms": d_torch * 1e3,
                         "trt_ms": d_trt * 1e3})
    for row in rows:
        row["ratio"] = row["torch_ms"] / row["trt_ms"]
        per = " /tok" if row["kind"] == "decode" else ""
        print(f"{row['kind']:>8} {row['tokens']:>7} {row['torch_ms']:>11.2f} {row['trt_ms']:>12.2f} "
              f"{row['ratio']:>5.2f}x{per}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config.name, "precision": args.precision,
                                               "gpu": torch.cuda.get_device_name(0), "rows": rows}, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
