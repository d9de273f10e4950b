"""``hybrid-export``: a checkpoint -> ONNX graphs or a TensorRT engine, checked against PyTorch.

    hybrid-export --onnx runs/stage2 exported/           # standard ops, runs in ONNX Runtime
    hybrid-export --onnx runs/stage2 exported/ --scan custom   # hybrid::SelectiveScan nodes (TensorRT plugins)
    hybrid-export --trt runs/stage2 engine/ --precision fp16 --triton-repo models/   # TensorRT engine (GPU)

The export is run in ONNX Runtime (and the engine in TensorRT) against PyTorch (the parity
gate) before the directory is written; a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from hybrid_mllm.core.cli import run_cli
from hybrid_mllm.core.errors import HybridError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--onnx", action="store_true", help="export ONNX graphs for ONNX Runtime")
    target.add_argument("--trt", action="store_true",
                        help="build a TensorRT decoder engine (custom-flavour ONNX + engine; needs tensorrt and a GPU)")
    p.add_argument("checkpoint", help="a checkpoint directory (config.yaml + model.safetensors)")
    p.add_argument("out_dir", help="the export directory to create")
    p.add_argument("--scan", choices=["standard", "custom"], default="standard",
                   help="standard: the scan in standard ONNX ops (default); "
                        "custom: hybrid:: nodes for TensorRT plugins")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: 23 for --scan standard, 20 for --scan custom)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and activations (for GPU providers)")
    p.add_argument("--force", action="store_true", help="replace out_dir if it exists")
    trt = p.add_argument_group("TensorRT (--trt)")
    trt.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="engine precision (default fp32)")
    trt.add_argument("--max-batch", type=int, default=4, help="largest batch the engine takes (default 4)")
    trt.add_argument("--max-seq", type=int, default=2048,
                     help="most tokens per engine call; longer prompts run in chunks (default 2048)")
    trt.add_argument("--max-past", type=int, default=8192, help="most tokens in total, prompt and answer (default 8192)")
    trt.add_argument("--plugin-impl", choices=["aot", "jit"], default="aot",
                     help="aot: plugin kernels compiled into the engine (default); jit: Python callbacks (debugging)")
    trt.add_argument("--triton-repo", help="also write a Triton Inference Server model repository here")
    trt.add_argument("--engine-cache", help="engine cache folder (default $HYBRID_MLLM_TRT_CACHE or ~/.cache/hybrid-mllm/trt)")
    p.add_argument("--verbose", "-v", action="store_true", help="show the exporters' progress and full errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.trt:
        return _main_trt(args)
    from hybrid_mllm.export.onnx import export_onnx  # heavy: onnx, onnxscript, onnxruntime

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        if not args.verbose:
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracing chatter
        manifest = export_onnx(args.checkpoint, args.out_dir, flavour=args.scan,
                               opset=args.opset,
                               dtype="float16" if args.fp16 else "float32", force=args.force, verbose=args.verbose,
                               log=log)
    graphs = ", ".join(g["file"] for g in manifest["graphs"].values())
    print(f"wrote {args.out_dir}: {graphs} ({manifest['flavour']} scan, opset {manifest['opset']})")
    return 0


def _main_trt(args) -> int:
    from hybrid_mllm.export.trt.build import BuildOptions
    from hybrid_mllm.export.trt.exporter import export_trt
    from hybrid_mllm.runtime.trt.profiles import ProfileLimits

    if args.scan != "standard" or args.fp16 or args.opset is not None:
        raise HybridError("--scan, --fp16 and --opset are for --onnx: --trt always exports the custom flavour; "
                          "choose the engine's precision with --precision")
    options = BuildOptions(precision=args.precision, plugin_impl=args.plugin_impl,
                           limits=ProfileLimits(max_batch=args.max_batch, max_seq=args.max_seq, max_past=args.max_past))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        if not args.verbose:
            warnings.simplefilter("ignore")
        info = export_trt(args.checkpoint, args.out_dir, options=options, triton_repo=args.triton_repo,
                          cache_dir=args.engine_cache, force=args.force, log=log)
    print(f"wrote {args.out_dir}: {info['plan']} ({args.precision}, {args.plugin_impl} plugins, "
          f"{info['platform']['gpu']}, TensorRT {info['platform']['tensorrt']})")
    return 0


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
