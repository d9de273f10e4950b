"""``hybrid-demo``: the embedded default task, end to end on a CPU.

Generates the digits data set (documents and videos of scikit-learn's handwritten digits),
then, for the hybrid and its attention-only twin: vision pretraining (encoder and connectors
learn to tell the digits apart), instruction tuning of the LM on the image and video
questions at <= 4 tiles and <= 8 frames, and evaluation at those sizes and far beyond them
(16 and 64 tiles, 32 and 128 frames). Writes results.md, results.json and results.png.

    hybrid-demo                       # the full run (see the README for its time)
    hybrid-demo --quick               # the same pipeline on little data with few steps
    hybrid-demo --models hybrid --steps 3000 --out runs/demo-long
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch
import yaml

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import load_checkpoint, save_checkpoint
from hybrid_mllm.core.cli import check_at_least_one, run_cli
from hybrid_mllm.core.config import Config, parse_config
from hybrid_mllm.core.presets import PRESET_DIR
from hybrid_mllm.core.text import load_tokenizer
from hybrid_mllm.runtime.pipeline import Pipeline
from hybrid_mllm.runtime.visual_inputs import Overrides
from hybrid_mllm.train.bpe import train_bpe
from hybrid_mllm.train.cli_train import run_training
from hybrid_mllm.train.config import TrainConfig, parse_train
from hybrid_mllm.train.data import read_records
from hybrid_mllm.train.evaluate import evaluate, write_results
from hybrid_mllm.train.pretrain_vision import pretrain_vision

from .data_digits import blind_share, make_digits_dataset, written_with
from .report import write_report
from .tiles import digit_tiles

MODELS = {"hybrid": "digits-hybrid", "attention": "digits-attention"}


@dataclass(frozen=True)
class Split:
    """An evaluation split: its file, the tiles or frames it shows (the plot's x), the overrides."""

    kind: str  # "image" or "video"
    name: str
    size: int
    overrides: Overrides = field(default_factory=Overrides)

    @property
    def label(self) -> str:
        return f"image, {self.size} tiles" if self.kind == "image" else \
            f"video, {'<= ' if self.name.endswith('low') else ''}{self.size} frames"


SPLITS = (Split("image", "eval_low", 4, Overrides(max_tiles=4)), Split("image", "eval_high", 16, Overrides(max_tiles=16)),
          Split("image", "eval_huge", 64, Overrides(max_tiles=64)), Split("video", "video_eval_low", 8),
          Split("video", "video_eval_high", 32), Split("video", "video_eval_huge", 128))


@dataclass(frozen=True)
class Budget:
    """How much of everything a run does."""

    data: dict  # make_digits_dataset sizes (empty: its defaults)
    pretrain_steps: int
    tiles: int  # labelled tiles per kind for vision pretraining
    steps: int | None  # instruction-tuning steps (None: the config's)


FULL = Budget(data={}, pretrain_steps=300, tiles=3000, steps=None)
QUICK = Budget(data={"train_images": 600, "eval_images": 24, "train_videos": 200, "eval_videos": 16},
               pretrain_steps=40, tiles=600, steps=60)


def header(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (as a user typed it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def prepare_data(data: Path, budget: Budget) -> dict:
    """Generate the data set into `data` (or reuse it when it was made with the same settings)
    and train the BPE tokenizer on its training questions; returns the tokenizer spec."""
    if written_with(data, **budget.data):
        print(f"using the data set in {shown(data)} (made earlier with these settings)")
    else:
        print(f"generating the digits data set in {shown(data)} ...", flush=True)
        t0 = time.perf_counter()
        counts = make_digits_dataset(data, force=True, **budget.data)
        print(f"wrote {', '.join(f'{k} {n}' for k, n in counts.items())} samples in {time.perf_counter() - t0:.0f} s")
    mixed = (data / "train.jsonl").read_text() + (data / "video_train.jsonl").read_text()
    (data / "mixed_train.jsonl").write_text(mixed)
    texts = (turn["value"] for line in mixed.splitlines() for turn in json.loads(line)["conversations"])
    spec = train_bpe(texts, data / "tokenizer.json")
    print(f"trained a BPE tokenizer of {load_tokenizer(spec).vocab_size} tokens on the training questions: "
          f"{shown(data / 'tokenizer.json')}")
    return spec


def configs(kind: str, data: Path, work: Path, budget: Budget, tokenizer: dict) -> tuple[Config, TrainConfig]:
    """The shipped preset with its data and output paths pointed at this run (absolute paths)
    and the data set's tokenizer."""
    raw = yaml.safe_load((PRESET_DIR / f"{MODELS[kind]}.yaml").read_text())
    raw["text"]["tokenizer"] = tokenizer
    for stage in raw["train"]["stages"]:
        stage["data"] = str(data / "mixed_train.jsonl")
        if budget.steps:
            stage["steps"] = budget.steps
    raw["train"]["output_dir"] = str(work / "run")
    config = parse_config(raw, source=MODELS[kind])
    return config, parse_train(config.train, source=MODELS[kind], base_dir=work)


def train_model(kind: str, data: Path, out: Path, budget: Budget, tokenizer: dict) -> dict:
    """Vision pretraining and instruction tuning of one model; returns its figures so far."""
    work = out / kind
    config, train = configs(kind, data, work, budget, tokenizer)
    header(f"{kind} ({MODELS[kind]}): vision pretraining, {budget.pretrain_steps} steps")
    t0 = time.perf_counter()
    model, tokenizer = build_mllm(config, seed=train.seed)
    accuracy = pretrain_vision(model, digit_tiles(data, model.encoder, limit=budget.tiles), n_classes=10,
                               steps=budget.pretrain_steps, seed=train.seed)
    print("digit accuracy of the visual tokens on held-out tiles: " +
          ", ".join(f"{name} {a:.1%}" for name, a in accuracy.items()))
    save_checkpoint(model, config, work / "init", tokenizer=tokenizer, overwrite=True)
    times = {"vision pretraining": time.perf_counter() - t0}
    header(f"{kind}: training " + "; ".join(f"stage '{s.name}', {s.steps} steps of {s.batch_size} samples, trains "
                                             f"{' + '.join(s.trainable)}" for s in train.stages))
    t0 = time.perf_counter()
    final = run_training(config, train, init=work / "init")
    times["training"] = time.perf_counter() - t0
    return {"model": kind, "config": MODELS[kind], "checkpoint": str(final), "vision_accuracy": accuracy,
            "times_s": times, "steps": [s.steps for s in train.stages]}


def train_models(kinds: list[str], data: Path, out: Path, budget: Budget, tokenizer: dict) -> list[dict]:
    """Train the models side by side, each in its own process on its share of the cores (the
    steps of these small models use a second core poorly); the first one in this process,
    where its progress shows, the others with their output in ``OUT/<model>/train.log``."""
    threads = max(1, (os.cpu_count() or 1) // len(kinds))
    others = kinds[1:]
    with ProcessPoolExecutor(max_workers=max(1, len(others)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_train_logged, kind, data, out, budget, tokenizer, threads) for kind in others]
        for kind in others:
            print(f"training the {kind} model alongside, in a second process; its log: "
                  f"{shown(out / kind / 'train.log')}")
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            first = train_model(kinds[0], data, out, budget, tokenizer)
        finally:
            torch.set_num_threads(previous)
        if others:
            header(f"waiting for the {', '.join(others)} model to finish training")
        return [first, *(f.result() for f in futures)]


def _train_logged(kind: str, data: Path, out: Path, budget: Budget, tokenizer: dict, threads: int) -> dict:
    """`train_model` in a worker process, its output into OUT/<kind>/train.log."""
    torch.set_num_threads(threads)
    (out / kind).mkdir(parents=True, exist_ok=True)
    with open(out / kind / "train.log", "w", buffering=1) as log, redirect_stdout(log), redirect_stderr(log):
        return train_model(kind, data, out, budget, tokenizer)


def evaluate_all(kind: str, checkpoint: Path, data: Path, work: Path) -> dict:
    model, tokenizer, config = load_checkpoint(checkpoint)
    pipeline = Pipeline(model.eval(), tokenizer, config)
    first = read_records(data / f"{SPLITS[0].name}.jsonl")[:2]
    evaluate(pipeline, first, [{}] * len(first), overrides=SPLITS[0].overrides, progress=False)  # warm-up, not timed
    results = {}
    for split in SPLITS:
        header(f"{kind}: evaluation, {split.label} ({split.name})")
        file = data / f"{split.name}.jsonl"
        raw = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        longest = max(len(tokenizer.encode(r["conversations"][1]["value"])) for r in raw)
        rows, summary = evaluate(pipeline, read_records(file), raw, overrides=split.overrides, batch_size=16,
                                 max_new_tokens=longest + 2)
        write_results(work / "eval" / split.name, rows, summary)
        results[split.label] = {**summary, "split": split.name, "kind": split.kind, "size": split.size,
                                "seconds_per_answer": summary["seconds"] / len(rows),
                                "prefill_seconds_per_answer": summary["prefill_seconds"] / len(rows),
                                "decode_seconds_per_step": summary["decode_seconds"] / max(1, summary["decode_steps"]),
                                "position_blind": position_blind(raw)}
        figures = results[split.label]
        print(f"exact match {summary['overall']['exact_match']:.1%} over {len(rows)} questions with "
              f"{summary['overall']['mean_visual_tokens']:.0f} visual tokens each: {figures['seconds_per_answer']:.3f} s "
              f"per answer, of which the LM's prefill {figures['prefill_seconds_per_answer']:.4f} s")
    return results


def position_blind(raw: list[dict]) -> dict[str, float]:
    """{qtype: what a reader of every digit that ignores the asked position would score} for the
    position questions (see `blind_share`): the line a model must beat to show it looks things up."""
    shares: dict[str, list[float]] = {}
    for record in raw:
        share = blind_share(record)
        if share is not None:
            shares.setdefault(record["qtype"], []).append(share)
    return {qtype: sum(s) / len(s) for qtype, s in sorted(shares.items())}


def ask_command(result: dict, data: Path) -> str:
    """A hybrid-run command that asks the trained model about the first 16-tile evaluation page."""
    record = json.loads((data / "eval_high.jsonl").read_text().splitlines()[0])
    question = record["conversations"][0]["value"]
    prompt = "$'" + question.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    return (f"hybrid-run --checkpoint {shlex.quote(shown(Path(result['checkpoint'])))} "
            f"--image {shlex.quote(shown(data / record['image']))} --max-tiles 16 --prompt {prompt}"
            f"    # the answer is {record['conversations'][1]['value']}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default="runs/demo", help="where data, checkpoints and results go (default runs/demo)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="which models to train")
    p.add_argument("--steps", type=int, help="instruction-tuning steps (default: the shipped configs')")
    p.add_argument("--quick", action="store_true", help="little data and few steps: checks the pipeline in about a minute")
    p.add_argument("--fresh", action="store_true", help="delete earlier checkpoints and results in --out first "
                                                        "(keeps the data)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_at_least_one(("--steps", args.steps))
    budget = QUICK if args.quick else FULL
    if args.steps:
        budget = Budget(budget.data, budget.pretrain_steps, budget.tiles, args.steps)
    out = Path(os.path.abspath(args.out))
    if args.fresh:
        for kind in MODELS:
            shutil.rmtree(out / kind, ignore_errors=True)
    t0 = time.perf_counter()
    header("data")
    tokenizer = prepare_data(out / "data", budget)
    results = train_models(list(dict.fromkeys(args.models)), out / "data", out, budget, tokenizer)
    for result in results:
        result["eval"] = evaluate_all(result["model"], Path(result["checkpoint"]), out / "data", out / result["model"])
    header(f"results ({time.perf_counter() - t0:.0f} s in all)")
    print(write_report(results, out, wall_s=time.perf_counter() - t0))
    print(f"\nresults: {shown(out / 'results.md')}, {shown(out / 'results.json')}, plot {shown(out / 'results.png')}")
    for r in results:
        print(f"{r['model']} checkpoint: {shown(Path(r['checkpoint']))}")
    print("\nask the trained model yourself:\n  " + ask_command(results[0], out / "data"))
    return 0


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
