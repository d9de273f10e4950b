"""``hybrid-export``: a checkpoint -> ONNX graphs checked against PyTorch (TensorRT: later).

    hybrid-export --onnx runs/stage2 exported/           # standard ops, runs in ONNX Runtime
    hybrid-export --onnx runs/stage2 exported/ --scan custom   # hybrid::SelectiveScan nodes (TensorRT plugins)

The export is run in ONNX Runtime against PyTorch (the parity gate) before the directory
is written; a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from hybrid_mllm.core._cli import run_cli
from hybrid_mllm.core.errors import HybridError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--onnx", action="store_true", help="export ONNX graphs for ONNX Runtime")
    target.add_argument("--trt", action="store_true", help="build TensorRT engines (not built yet)")
    p.add_argument("checkpoint", help="a checkpoint directory (config.yaml + model.safetensors)")
    p.add_argument("out_dir", help="the export directory to create")
    p.add_argument("--scan", choices=["standard", "custom"], default="standard",
                   help="standard: the scan in standard ONNX ops (default); "
                        "custom: hybrid:: nodes for TensorRT plugins")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: 23 for --scan standard, 20 for --scan custom)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and activations (for GPU providers)")
    p.add_argument("--force", action="store_true", help="replace out_dir if it exists")
    p.add_argument("--verbose", "-v", action="store_true", help="show the exporters' progress and full errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.trt:
        raise HybridError("the TensorRT path (--trt) is not built yet: export with --onnx (--scan custom for the "
                          "graph its plugins will take)")
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


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
