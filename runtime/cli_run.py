"""``hybrid-run``: answer a prompt about images and videos, streaming the answer.

    hybrid-run --config mllm-tiny --image photo.jpg --prompt "What is in the picture?"
    hybrid-run --checkpoint runs/stage2 --video clip.mp4 --max-frames 64 --prompt "..."
    hybrid-run --onnx exported/ --image photo.jpg --prompt "..." --provider cpu
    hybrid-run --trt engine/ --image photo.jpg --prompt "..."          # a hybrid-export --trt directory

Runtime: PyTorch for a checkpoint directory or, with random weights, a YAML config /
shipped preset; ONNX Runtime for a directory written by ``hybrid-export --onnx``; TensorRT
(the decoder; vision graphs in ONNX Runtime) for one written by ``hybrid-export --trt``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.cli import check_at_least_one, check_device, run_cli
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.presets import resolve_config_path

from .generate import Decoder, GenerationConfig
from .huge_pages import weights_on_huge_pages
from .pipeline import PREFILL_CHUNK, Overrides, Pipeline, Request

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory (config.yaml + model.safetensors)")
    src.add_argument("--config", help="a YAML config or shipped preset (random weights)")
    src.add_argument("--onnx", help="an export directory of hybrid-export --onnx (runs in ONNX Runtime)")
    src.add_argument("--trt", help="an engine directory of hybrid-export --trt (runs in TensorRT on the GPU)")
    p.add_argument("--prompt", required=True, help="the question; <image>/<video> mark where the files go")
    p.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    p.add_argument("--video", action="append", default=[], help="a video file, frame folder (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set reaching this probability (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens (1 = off)")
    p.add_argument("--stop", action="append", default=[], help="an extra stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and for a config's random weights")
    p.add_argument("--max-tiles", type=int, help="anyres tile limit at inference (default: the config's)")
    p.add_argument("--max-frames", type=int, help="frames sampled per video (default: the config's)")
    p.add_argument("--fps", type=float, help="sample video frames at this rate (capped by --max-frames)")
    p.add_argument("--max-visual-tokens", type=int, help="refuse a request with more visual tokens (default: the "
                                                          "config's text.max_visual_tokens, if any)")
    p.add_argument("--prefill-chunk", type=int,
                   help=f"prompt tokens per prefill step: less memory, a little slower (default {PREFILL_CHUNK}; "
                        "--onnx: 1024; not for --trt, whose engine prefills in chunks of its --max-seq)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (PyTorch runtime; default cpu)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weights dtype (PyTorch runtime)")
    p.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu",
                   help="ONNX Runtime execution provider with --onnx (cuda/tensorrt need onnxruntime-gpu)")
    p.add_argument("--verbose", "-v", action="store_true", help="print token counts and speed")
    return p


def _load(args) -> tuple[Pipeline, Decoder | None]:
    """The pipeline and, for --onnx, its ONNX Runtime decoder (None: PyTorch's)."""
    if args.trt:
        from .trt.engine import load_trt  # needs tensorrt, only for --trt

        loaded = load_trt(args.trt, provider=args.provider)
        return loaded.pipeline, loaded.decoder
    if args.onnx:
        from .onnx import load_onnx  # needs onnxruntime, only for --onnx

        chunk = {} if args.prefill_chunk is None else {"prefill_chunk": args.prefill_chunk}
        loaded = load_onnx(args.onnx, provider=args.provider, **chunk)
        return loaded.pipeline(), loaded.decoder
    dtype = DTYPES[args.dtype]
    if args.checkpoint:
        loaded = load_checkpoint(args.checkpoint, device=args.device, dtype=dtype)
        model, tokenizer, config = loaded
    else:
        config = load_config(resolve_config_path(args.config))
        model, tokenizer = build_mllm(config, seed=args.seed, device=args.device, dtype=dtype)
    weights_on_huge_pages(model)  # the decode steps stream them (huge_pages.py)
    return Pipeline(model.eval(), tokenizer, config), None


class _Streamer:
    """Prints the answer as it grows (whole characters only: bytes of a character may span tokens)."""

    def __init__(self, decode):
        self.decode, self.ids, self.shown = decode, [], 0

    def __call__(self, index: int, token: int) -> None:
        self.ids.append(token)
        text = self.decode(self.ids)
        if not text.endswith("\ufffd"):
            print(text[self.shown:], end="", flush=True)
            self.shown = len(text)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_at_least_one(("--max-tiles", args.max_tiles), ("--max-frames", args.max_frames),
                       ("--max-visual-tokens", args.max_visual_tokens), ("--prefill-chunk", args.prefill_chunk))
    if args.trt and args.prefill_chunk is not None:
        raise HybridError("--prefill-chunk is not for --trt: the engine prefills in chunks of the --max-seq it was "
                          "built with (rebuild with hybrid-export --trt --max-seq N to change it)")
    check_device(args.device)
    pipeline, decoder = _load(args)
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                                  stop_strings=tuple(args.stop), seed=args.seed)
    streamer = _Streamer(pipeline.tokenizer.decode)
    request = Request(args.prompt, images=args.image, videos=args.video)
    result, batch = pipeline.answer([request], generation, on_token=streamer, decoder=decoder,
                                    overrides=Overrides(args.max_tiles, args.max_frames, args.fps, args.max_visual_tokens),
                                    prefill_chunk=PREFILL_CHUNK if args.prefill_chunk is None else args.prefill_chunk)
    print(result.texts[0][streamer.shown:])  # the rest, if the last characters were incomplete
    if args.verbose:
        n = len(result.tokens[0])
        print(f"[{result.prompt_tokens:,} prompt tokens ({batch.n_visual[0]:,} visual): prefill {result.prefill_s:.2f} s "
              f"({result.prompt_tokens / max(result.prefill_s, 1e-9):,.0f} tok/s); {n} new tokens in {result.decode_s:.2f} s "
              f"({n / max(result.decode_s, 1e-9):.1f} tok/s)]", file=sys.stderr)
    return 0


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
