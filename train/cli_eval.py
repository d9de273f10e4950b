"""``hybrid-eval CHECKPOINT DATA.jsonl``: answer every question and score it (exact match, ANLS).

    hybrid-eval runs/digits/stage-finetune/final data/eval_high.jsonl --max-tiles 16 --out results/high
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.cli import check_at_least_one, check_device, run_cli
from hybrid_mllm.runtime.huge_pages import weights_on_huge_pages
from hybrid_mllm.runtime.pipeline import PREFILL_CHUNK, Pipeline
from hybrid_mllm.runtime.visual_inputs import Overrides

from .data import json_items, read_records
from .evaluate import evaluate, write_results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("checkpoint", help="a checkpoint directory (config.yaml + model.safetensors)")
    p.add_argument("data", help="LLaVA-format JSON/JSONL with questions and reference answers")
    p.add_argument("--data-root", help="folder the data's paths are relative to (default: the data file's folder)")
    p.add_argument("--max-tiles", type=int, help="anyres tile limit (evaluate at another resolution)")
    p.add_argument("--max-frames", type=int, help="frames per video")
    p.add_argument("--max-visual-tokens", type=int, help="refuse a record with more visual tokens")
    p.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK, help=f"prompt tokens per prefill step "
                                                                            f"(default {PREFILL_CHUNK})")
    p.add_argument("--batch-size", type=int, default=8, help="questions answered together (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="longest answer in tokens (default 16)")
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument("--out", help="write samples.jsonl and summary.json here")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_at_least_one(("--max-tiles", args.max_tiles), ("--max-frames", args.max_frames),
                       ("--max-visual-tokens", args.max_visual_tokens), ("--prefill-chunk", args.prefill_chunk),
                       ("--batch-size", args.batch_size))
    model, tokenizer, config = load_checkpoint(args.checkpoint, device=check_device(args.device))
    records = read_records(args.data, args.data_root)[: args.limit]
    raw = [item for _, item in json_items(Path(args.data), Path(args.data).read_text())][: len(records)]
    weights_on_huge_pages(model)  # the decode steps stream them (runtime/huge_pages.py)
    pipeline = Pipeline(model.eval(), tokenizer, config)
    rows, summary = evaluate(pipeline, records, raw, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                             overrides=Overrides(args.max_tiles, args.max_frames, max_visual_tokens=args.max_visual_tokens),
                             prefill_chunk=args.prefill_chunk)
    if args.out:
        write_results(Path(args.out), rows, summary)
    overall = summary["overall"]
    print(f"{overall['n']} questions: exact match {overall['exact_match']:.1%}, ANLS {overall['anls']:.3f}, "
          f"{overall['mean_visual_tokens']:.0f} visual tokens on average")
    for qtype, s in summary["by_type"].items():
        print(f"  {qtype:14s} n={s['n']:4d}  exact match {s['exact_match']:.1%}  ANLS {s['anls']:.3f}")
    return 0


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
