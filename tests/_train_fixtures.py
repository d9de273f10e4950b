"""A tiny LLaVA-format data set and training config, generated for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

MODEL = {
    "vocab_size": 263, "d_model": 32, "n_layer": 2, "layers": ["mamba", "attention"],
    "mixers": {"mamba": {"d_state": 4, "expand": 2}, "attention": {"n_head": 2}}, "mlp": {"d_hidden": 64},
}
VISION = {"encoder": {"name": "tiny", "image_size": 16, "patch_size": 8, "width": 16},
          "connector": {"name": "mlp2x_gelu"}, "max_tiles": 2}


def write_dataset(root: Path, n: int = 8) -> Path:
    """n samples: a solid-colour image, asked for its colour."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    lines = []
    rng = np.random.default_rng(0)
    for i in range(n):
        name = list(colours)[i % 3]
        pixels = np.clip(np.array(colours[name]) + rng.integers(-20, 20, (24, 16 + 8 * (i % 3), 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / "img" / f"{i}.png")
        lines.append({"id": str(i), "image": f"img/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": name}]})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def write_config(root: Path, *, steps=(2, 4), batch_size: int = 4, save_every: int = 0, **train) -> Path:
    data = write_dataset(root)
    config = {"name": "tiny-train", "model": MODEL, "vision": VISION, "train": {
        "output_dir": str(root / "run"), "seed": 0, "log_every": 1, "save_every": save_every, **train,
        "stages": [
            {"name": "align", "data": str(data), "trainable": ["connector"], "lr": 1e-2, "steps": steps[0],
             "batch_size": batch_size},
            {"name": "finetune", "data": str(data), "trainable": ["connector", "lm"],
             "lr": {"connector": 1e-2, "lm": 3e-3}, "steps": steps[1], "batch_size": batch_size, "warmup_steps": 1},
        ]}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def losses(run_dir: Path, stage: str) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["stage"] == stage]
