"""``hybrid-train CONFIG [--stage S] [--resume DIR] [key=value ...]``: train the stages of a config.

    hybrid-train configs/digits.yaml                      # every stage, in order
    hybrid-train configs/digits.yaml --stage finetune     # one stage (starts from the previous one's final)
    hybrid-train configs/digits.yaml --resume runs/digits/stage-align/step-000100
    hybrid-train configs/digits.yaml train.stages.0.steps=20 train.seed=1
    torchrun --nproc-per-node 2 -m hybrid_mllm.train.cli_train configs/digits.yaml   # DDP (gloo on CPU)
    torchrun --nproc-per-node 2 -m hybrid_mllm.train.cli_train configs/digits.yaml train.parallel=fsdp  # sharded
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import load_weights, weight_files
from hybrid_mllm.core.cli import check_device, run_cli
from hybrid_mllm.core.config import Config, parse_config
from hybrid_mllm.core.errors import ConfigError
from hybrid_mllm.core.text import get_template
from hybrid_mllm.core.yaml_io import read_yaml
from hybrid_mllm.runtime.visual_inputs import VisualLoader

from .config import TrainConfig, apply_overrides, parse_train
from .data import LlavaDataset, read_records
from .determinism import make_deterministic
from .distributed import DistInfo, init_distributed, shutdown
from .fsdp import SINGLE_PROCESS_NOTE, shard_like
from .lock import OutputLock
from .loop import StageRun
from .sampler import LengthGroupedBatches


def load_train_config(path: str, overrides: list[str]) -> tuple[Config, TrainConfig]:
    raw = read_yaml(path)
    if isinstance(raw, dict):  # otherwise parse_config says what the document should be
        raw = apply_overrides(raw, overrides, source=path)
    config = parse_config(raw, source=path)
    return config, parse_train(config.train, source=path, base_dir=Path(path).parent)


def stage_index(train: TrainConfig, stage: str | None) -> int | None:
    if stage is None:
        return None
    names = [s.name for s in train.stages]
    if stage.isdigit() and 1 <= int(stage) <= len(names):
        return int(stage) - 1
    if stage in names:
        return names.index(stage)
    raise ConfigError("--stage", [f"--stage: no stage '{stage}' (stages: {', '.join(names)}, or 1..{len(names)})"])


def run_training(config: Config, train: TrainConfig, *, only: int | None = None, resume: Path | None = None,
                 init: Path | None = None, dist: DistInfo | None = None) -> Path:
    """Train stage `only` (or every stage in order); returns the last final checkpoint.
    `init`: a checkpoint whose weights the first stage starts from (e.g. a pretrained encoder)."""
    dist = dist or DistInfo()
    if train.parallel == "fsdp" and dist.world_size == 1:
        print(SINGLE_PROCESS_NOTE, file=sys.stderr)
    if train.deterministic:
        make_deterministic()
    torch.manual_seed(train.seed)
    model, tokenizer = build_mllm(config, seed=train.seed, device=dist.device)
    if init is not None:
        load_weights(model, weight_files(init), source=str(init), place=shard_like)
    indices = [only] if only is not None else list(range(len(train.stages)))
    final = None
    for index in indices:
        if index > 0 and (resume is None or index != indices[0]) and (init is None or index != indices[0]):
            _start_from_previous(model, train, index)
        run = _stage_run(model, tokenizer, config, train, index, dist)
        run.lm_untrained = index == 0 and init is None and resume is None
        final = run.run(resume if index == indices[0] else None)
    return final


def _start_from_previous(model, train: TrainConfig, index: int) -> None:
    previous = train.path(train.output_dir) / f"stage-{train.stages[index - 1].name}" / "final"
    if not previous.exists():
        raise ConfigError("--stage", [f"stage '{train.stages[index].name}' starts from {previous}, which does not "
                                      f"exist: train stage '{train.stages[index - 1].name}' first"])
    load_weights(model, weight_files(previous), source=str(previous), place=shard_like)


def _stage_run(model, tokenizer, config: Config, train: TrainConfig, index: int, dist: DistInfo) -> StageRun:
    stage = train.stages[index]
    data = train.path(stage.data)
    root = train.path(stage.data_root) if stage.data_root else data.parent
    dataset = LlavaDataset(read_records(data, root), tokenizer, get_template(config.text.template),
                           VisualLoader(model, config.vision))
    lengths = [dataset.text_length(i) for i in range(len(dataset))]
    batches = LengthGroupedBatches(lengths, stage.batch_size, seed=train.seed, rank=dist.rank, world_size=dist.world_size)
    return StageRun(model, tokenizer, config, train, stage, dataset, batches, dist,
                    max_len=train.max_len or config.text.max_context)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("config", help="a YAML config with model, vision, text and train sections")
    p.add_argument("overrides", nargs="*", help="key=value settings that replace the YAML's (values parsed as YAML)")
    p.add_argument("--stage", help="train only this stage (name or 1-based number)")
    p.add_argument("--resume", help="a step checkpoint of this run to continue exactly from")
    p.add_argument("--init", help="a checkpoint whose weights the first stage trained starts from")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)  # overrides may follow options
    config, train = load_train_config(args.config, args.overrides)
    resume = Path(args.resume) if args.resume else None
    only = stage_index(train, args.stage)
    if resume is not None and only is None:
        only = _stage_of(resume, train)
    dist = init_distributed(check_device(args.device))
    try:
        lock = OutputLock(train.path(train.output_dir)) if dist.main else None
        with lock or contextlib.nullcontext():
            final = run_training(config, train, only=only, resume=resume, dist=dist,
                                 init=Path(args.init) if args.init else None)
        if dist.main:
            print(f"final checkpoint: {final}")
    finally:
        shutdown()
    return 0


def _stage_of(resume: Path, train: TrainConfig) -> int:
    names = [f"stage-{s.name}" for s in train.stages]
    parent = resume.resolve().parent.name
    if parent not in names:
        raise ConfigError("--resume", [f"--resume: {resume} is not inside a stage directory of this config "
                                       f"({', '.join(names)}); pass --stage as well"])
    return names.index(parent)


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
