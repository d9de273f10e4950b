"""``hybrid-demo``: the embedded default task, end to end on a CPU.

Generates the digits data, then for the hybrid and its attention-only twin: encoder
pretraining, stage 1 (connector), stage 2 (encoder + connector + LM), and evaluation at
the training resolution / frame count and far beyond it (16 tiles, 32 frames). Writes a
results table (markdown and JSON) and a plot, with wall-clock times.

    hybrid-demo                      # about 10 minutes on 2 CPU cores (plus the data)
    hybrid-demo --quick              # a short smoke run: same pipeline, few steps
    hybrid-demo --out runs/demo --steps 2000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from hybrid_mllm.core.cli import run_cli
from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import load_checkpoint, save_checkpoint
from hybrid_mllm.core.config import parse_config
from hybrid_mllm.runtime.pipeline import Pipeline
from hybrid_mllm.core.presets import PRESET_DIR
from hybrid_mllm.core.vision.image import normalize_tensor, to_tensor
from hybrid_mllm.runtime.visual_inputs import Overrides

from .cli_train import run_training
from .config import parse_train
from .data import read_records
from .data_digits import blind_share, make_digits_dataset
from .evaluate import evaluate, write_results
from .pretrain_encoder import pretrain_cells

MODELS = {"hybrid": "digits-hybrid", "attention": "digits-attention"}
# split -> (data file, overrides): train at <= 4 tiles / <= 8 frames, evaluate far beyond
SPLITS = {
    "image, 4 tiles": ("eval_low.jsonl", Overrides(max_tiles=4)),
    "image, 16 tiles": ("eval_high.jsonl", Overrides(max_tiles=16)),
    "video, <= 8 frames": ("video_eval_low.jsonl", Overrides()),
    "video, 32 frames": ("video_eval_high.jsonl", Overrides()),
}


def prepare_data(out: Path, quick: bool) -> Path:
    data = out / "data"
    if not (data / "meta.json").exists():
        sizes = {"train_images": 1200, "eval_images": 60, "train_videos": 400, "eval_videos": 40} if quick else {}
        make_digits_dataset(data, seed=0, **sizes)
    mixed = data / "mixed_train.jsonl"
    if not mixed.exists():
        mixed.write_text((data / "train.jsonl").read_text() + (data / "video_train.jsonl").read_text())
    return data


def cell_tiles(data: Path, encoder, limit: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    """32 px tiles cut from training documents whose sides are whole tiles, with their 2x2 digit labels."""
    tiles, labels = [], []
    for line in (data / "train.jsonl").read_text().splitlines():
        record = json.loads(line)
        grid = np.array(record["grid"])
        rows, cols = grid.shape
        if rows % 2 or cols % 2:
            continue
        pixels = normalize_tensor(to_tensor(Image.open(data / record["image"]).convert("RGB")), encoder.mean, encoder.std)
        for r in range(0, rows, 2):
            for c in range(0, cols, 2):
                tiles.append(pixels[:, 16 * r:16 * r + 32, 16 * c:16 * c + 32])
                labels.append(torch.tensor(grid[r:r + 2, c:c + 2]))
        if len(tiles) >= limit:
            break
    return torch.stack(tiles), torch.stack(labels)


def run_model(kind: str, data: Path, out: Path, steps: int | None, quick: bool) -> dict:
    """Pretrain the encoder, train both stages, evaluate every split; returns the figures."""
    raw = yaml.safe_load((PRESET_DIR / f"{MODELS[kind]}.yaml").read_text())
    work = out / kind
    work.mkdir(parents=True, exist_ok=True)
    stages = raw["train"]["stages"]
    for stage in stages:
        stage["data"] = str(data / "mixed_train.jsonl")
    if steps:
        stages[1]["steps"] = steps
    if quick:
        stages[0]["steps"], stages[1]["steps"] = 20, steps or 150
    raw["train"]["output_dir"] = str(work / "run")
    config = parse_config(raw, source=MODELS[kind])
    train = parse_train(config.train, source=MODELS[kind], base_dir=work)
    times = {}
    t0 = time.perf_counter()
    init = work / "init"
    model, tokenizer = build_mllm(config, seed=train.seed)
    tiles, labels = cell_tiles(data, model.encoder)
    pretrain_acc = pretrain_cells(model.encoder, tiles, labels, n_classes=10, steps=60 if quick else 250)
    save_checkpoint(model, config, init, tokenizer=tokenizer, overwrite=True)
    times["encoder pretraining"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    final = run_training(config, train, init=init)
    times["training"] = time.perf_counter() - t0
    figures = evaluate_all(final, data, work / "eval", quick)
    return {"model": kind, "config": MODELS[kind], "encoder_pretrain_accuracy": pretrain_acc, "times_s": times,
            "steps": [s.steps for s in train.stages], **figures}


def evaluate_all(checkpoint: Path, data: Path, out: Path, quick: bool) -> dict:
    model, tokenizer, config = load_checkpoint(checkpoint)
    pipeline = Pipeline(model.eval(), tokenizer, config)
    results, t0 = {}, time.perf_counter()
    for split, (file, overrides) in SPLITS.items():
        records = read_records(data / file)
        raw = [json.loads(x) for x in (data / file).read_text().splitlines() if x.strip()]
        rows, summary = evaluate(pipeline, records, raw, overrides=overrides, batch_size=16, max_new_tokens=10)
        write_results(out / file.replace(".jsonl", ""), rows, summary)
        results[split] = {**summary, "position_blind": position_blind(raw)}
    return {"eval": results, "eval_s": time.perf_counter() - t0}


def position_blind(raw: list[dict]) -> dict[str, float]:
    """{qtype: what a reader of every digit that ignores the asked position would score} for the
    position questions (see `blind_share`): the line a model must beat to show it looks things up."""
    shares: dict[str, list[float]] = {}
    for record in raw:
        share = blind_share(record)
        if share is not None:
            shares.setdefault(record["qtype"], []).append(share)
    return {qtype: sum(s) / len(s) for qtype, s in sorted(shares.items())}


def report(results: list[dict], out: Path) -> str:
    lines = ["| split | question type | " + " | ".join(r["model"] for r in results) + " | position-blind reader |",
             "|---|---|" + "---|" * (len(results) + 1)]
    for split in SPLITS:
        qtypes = results[0]["eval"][split]["by_type"]
        for qtype in ["all", *qtypes]:
            cells = []
            for r in results:
                s = r["eval"][split]["overall" if qtype == "all" else "by_type"]
                s = s if qtype == "all" else s[qtype]
                cells.append(f"{s['exact_match']:.1%} (n={s['n']})")
            blind = results[0]["eval"][split]["position_blind"].get(qtype)
            cells.append("" if blind is None else f"{blind:.1%}")
            lines.append(f"| {split} | {qtype} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in results:
        t = r["times_s"]
        lines.append(f"- {r['model']}: encoder pretraining {t['encoder pretraining']:.0f} s (cell accuracy "
                     f"{r['encoder_pretrain_accuracy']:.0%}), training {t['training']:.0f} s for steps {r['steps']}, "
                     f"evaluation {r['eval_s']:.0f} s")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "results.png")
    return text


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        scores = [100 * r["eval"][s]["overall"]["exact_match"] for s in SPLITS]
        bars = ax.bar(np.arange(len(SPLITS)) + i * width, scores, width, label=r["model"])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(np.arange(len(SPLITS)) + width * (len(results) - 1) / 2, list(SPLITS))
    ax.set(ylabel="exact match (%)", ylim=(0, 105),
           title="digits demo: trained at <= 4 tiles / <= 8 frames, evaluated beyond")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default="runs/demo", help="where data, checkpoints and results go (default runs/demo)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--steps", type=int, help="stage-2 steps (default: the shipped configs')")
    p.add_argument("--quick", action="store_true", help="small data and few steps: checks the pipeline in ~2 minutes")
    p.add_argument("--fresh", action="store_true", help="delete earlier results in --out first (keeps the data)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    if args.fresh:
        for kind in MODELS:
            shutil.rmtree(out / kind, ignore_errors=True)
    t0 = time.perf_counter()
    data = prepare_data(out, args.quick)
    results = [run_model(kind, data, out, args.steps, args.quick) for kind in args.models]
    print(report(results, out))
    print(f"\nwall clock {time.perf_counter() - t0:.0f} s; results in {out}/results.md, plot {out}/results.png")
    return 0


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
