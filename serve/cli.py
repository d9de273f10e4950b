"""``hybrid-serve``: an OpenAI-compatible multimodal API (and a chat page at /) for a model.

    hybrid-serve --checkpoint runs/demo/hybrid/run/stage-instruct/final
    hybrid-serve --onnx exported/                            # a hybrid-export --onnx directory, in ONNX Runtime
    hybrid-serve --config mllm-tiny --port 8001              # random weights: a smoke test
    hybrid-serve --checkpoint CKPT --allowed-media-dir ~/pictures --max-visual-tokens 20000

Then point an OpenAI client at http://127.0.0.1:8000/v1 (any API key), or open
http://127.0.0.1:8000/ in a browser. It binds to loopback unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.cli import check_at_least_one, run_cli
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.presets import resolve_config_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory (config.yaml + model.safetensors)")
    src.add_argument("--config", help="a YAML config or shipped preset (random weights)")
    src.add_argument("--onnx", help="an export directory of hybrid-export --onnx (runs in ONNX Runtime)")
    src.add_argument("--trt", help="not served yet: a TensorRT engine directory (use --onnx or --checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model-name", help="the model id clients send (default: the config's name)")
    p.add_argument("--max-seqs", type=int, default=16, help="sequences decoded together at most (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429s (default 64)")
    p.add_argument("--prefill-chunk", type=int, default=512,
                   help="prompt tokens read per engine step, so a long prompt does not stall the others (default 512)")
    p.add_argument("--max-visual-tokens", type=int, help="refuse a request with more visual tokens (default: the "
                                                         "config's text.max_visual_tokens, if any)")
    p.add_argument("--max-tokens", type=int, default=512, help="answer length when a request sets none (default 512)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take in all (default 300)")
    p.add_argument("--allowed-media-dir", help="serve local image / video paths under this folder (default: none; "
                                               "data: URLs only)")
    p.add_argument("--seed", type=int, default=0, help="seed of a config's random weights")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_at_least_one(("--max-seqs", args.max_seqs), ("--max-queue", args.max_queue),
                       ("--prefill-chunk", args.prefill_chunk), ("--max-tokens", args.max_tokens),
                       ("--max-visual-tokens", args.max_visual_tokens))
    if not 0 < args.port < 65536:
        raise HybridError(f"--port {args.port}: use a port between 1 and 65535")
    app = build_app(args)
    import uvicorn

    print(f"serving '{app.state.served.model_name}' on http://{args.host}:{args.port} (OpenAI API under /v1, "
          f"chat page at /)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def build_app(args: argparse.Namespace):
    """The app (with its engine, started when the app starts), from parsed arguments."""
    try:
        from .app import Limits, create_app
        from .engine import Engine
        from .metrics import Metrics
    except ImportError as e:
        raise HybridError(f"hybrid-serve needs the serve extra ({e.name} is missing): "
                          "pip install 'hybrid-mllm[serve]'") from None
    pipeline, backend = _load(args)
    metrics = Metrics()
    engine = Engine(backend, pipeline.tokenizer, pipeline.template.stop_token_ids(pipeline.tokenizer), metrics=metrics,
                    max_seqs=args.max_seqs, max_queue=args.max_queue, prefill_chunk=args.prefill_chunk)
    media = Path(args.allowed_media_dir).resolve() if args.allowed_media_dir else None
    if media is not None and not media.is_dir():
        raise HybridError(f"--allowed-media-dir {args.allowed_media_dir}: not a folder")
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_visual_tokens=args.max_visual_tokens,
                    default_max_tokens=args.max_tokens, timeout_s=args.timeout, allowed_media_dir=media)
    return create_app(pipeline, engine, metrics, model_name=args.model_name or pipeline.config.name, limits=limits)


def _load(args: argparse.Namespace):
    """The pipeline (rendering, media) and the engine's backend for the chosen model source."""
    from hybrid_mllm.runtime.huge_pages import weights_on_huge_pages
    from hybrid_mllm.runtime.pipeline import Pipeline

    from .backends import OrtBackend, TorchBackend

    if args.trt:
        raise HybridError("--trt: hybrid-serve does not run TensorRT engines yet; serve the checkpoint "
                          "(--checkpoint) or its ONNX export (--onnx)")
    if args.onnx:
        from hybrid_mllm.runtime.onnx import load_onnx  # needs onnxruntime, only for --onnx

        loaded = load_onnx(args.onnx)
        return loaded.pipeline(), OrtBackend(loaded.model, loaded.decoder)
    if args.checkpoint:
        model, tokenizer, config = load_checkpoint(args.checkpoint)
    else:
        config = load_config(resolve_config_path(args.config))
        model, tokenizer = build_mllm(config, seed=args.seed)
    weights_on_huge_pages(model)  # the decode steps stream them (runtime/huge_pages.py)
    return Pipeline(model.eval(), tokenizer, config), TorchBackend(model)


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
