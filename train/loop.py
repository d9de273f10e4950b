"""One training stage: trainable parts, AdamW + warmup/cosine, accumulation, clipping,
checkpoints with exact resume, DDP or FSDP under torchrun, progress bar and JSONL metrics."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from hybrid_mllm.core.atomic import remove_partial
from hybrid_mllm.core.checkpoint import load_weights, save_checkpoint, weight_files
from hybrid_mllm.core.config import Config
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.mllm import HybridMLLM
from hybrid_mllm.core.text import IGNORE_INDEX, Tokenizer
from hybrid_mllm.runtime.splice import embed

from . import fsdp
from .config import StageConfig, TrainConfig
from .data import DataError, LlavaDataset, Sample
from .distributed import DistInfo
from .state import Progress, load_state, save_state

MAX_NONFINITE_IN_A_ROW = 16  # with train.on_nonfinite: skip, this many in a row stops the run


class TrainError(HybridError):
    """Training cannot go on: non-finite loss, a resume that does not fit."""


def set_trainable(model: HybridMLLM, parts: list[str]) -> None:
    """Only the named parts (encoder, connector, lm) get gradients; the connector part
    includes the video connector and the learned newline / frame-separator embeddings."""
    model.requires_grad_(False)
    for part, params in part_parameters(model).items():
        if part in parts:
            for p in params:
                p.requires_grad_(True)


def part_parameters(model: HybridMLLM) -> dict[str, list[nn.Parameter]]:
    connector = [p for m in (model.connector, model.video_connector) if m is not None for p in m.parameters()]
    connector += [p for p in (model.image_newline, model.frame_separator) if p is not None]
    return {"encoder": list(model.encoder.parameters()) if model.encoder is not None else [],
            "connector": connector, "lm": list(model.lm.parameters())}


def make_optimizer(model: HybridMLLM, stage: StageConfig, weight_decay: float) -> torch.optim.AdamW:
    groups = []
    for part, params in part_parameters(model).items():
        if part in stage.trainable and params:
            lr = stage.lr[part] if isinstance(stage.lr, dict) else stage.lr
            groups.append({"params": params, "lr": lr, "base_lr": lr, "name": part})
    if not groups:
        raise TrainError(f"stage '{stage.name}': nothing to train (trainable: {stage.trainable}; the model has "
                         f"{'no' if model.encoder is None else 'an'} encoder)")
    return torch.optim.AdamW(groups, weight_decay=weight_decay, betas=(0.9, 0.98))


def lr_factor(step: int, stage: StageConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio` at the last step."""
    if step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    span = max(1, stage.steps - stage.warmup_steps)
    progress = min(1.0, (step - stage.warmup_steps) / span)
    return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LossStep(nn.Module):
    """The forward DDP wraps: samples -> (summed token cross-entropy, MoE aux loss)."""

    def __init__(self, model: HybridMLLM):
        super().__init__()
        self.model = model

    def forward(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = embed(self.model, [s.ids for s in samples], [s.visuals for s in samples], [s.labels for s in samples])
        out = self.model(batch.embeds, batch.mask)
        logits, labels = out.logits[:, :-1], batch.labels[:, 1:].to(out.logits.device)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                             reduction="sum")
        return ce, out.aux_loss


def _zero_on_trainable(model: nn.Module) -> torch.Tensor:
    """0, attached to every trainable parameter: backward then runs (all-zero gradients),
    as DDP and FSDP need on every rank, for a batch that touches none of them."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    local = [p.to_local() if hasattr(p, "to_local") else p for p in trainable]  # FSDP: this rank's shards
    return sum(p.sum() for p in local) * 0.0


def count_targets(samples: list[Sample]) -> int:
    return sum(int((s.labels[1:] != IGNORE_INDEX).sum()) for s in samples)


@dataclass
class StageRun:
    """Everything one stage needs; `run()` trains it and returns the final checkpoint directory."""

    model: HybridMLLM
    tokenizer: Tokenizer
    config: Config
    train: TrainConfig
    stage: StageConfig
    dataset: LlavaDataset
    batches: object  # LengthGroupedBatches
    dist: DistInfo
    max_len: int
    lm_untrained: bool = False  # the LM has random weights (no --init, no earlier stage)

    @property
    def stage_dir(self) -> Path:
        return self.train.path(self.train.output_dir) / f"stage-{self.stage.name}"

    def run(self, resume: Path | None = None) -> Path:
        if self.dist.main:
            remove_partial(self.stage_dir)  # what a killed run left mid-checkpoint (we hold the output lock)
        self._check_data_feeds_trainable()
        if self.lm_untrained and self.dist.main:
            self._warn_if_aligning_to_the_untrained_lm()
        set_trainable(self.model, self.stage.trainable)
        self.model.lm.activation_checkpointing = self.train.activation_checkpointing
        step_module = self._wrap()  # before the optimizer: FSDP replaces the parameters by shards
        optimizer = make_optimizer(self.model, self.stage, self.train.weight_decay)
        progress = Progress(self.stage.name, 0, 0, 0, 0, self.dist.world_size)
        if resume is not None:
            progress = self._resume(resume, optimizer)
        self.model.train()
        self._loop(step_module, optimizer, progress)
        final = self.stage_dir / "final"
        self._save(final, optimizer, progress_at_end(progress, self.stage), overwrite=True)
        self.dist.barrier()
        return final

    def _check_data_feeds_trainable(self) -> None:
        """A stage that trains only vision parts needs some images or videos in its data."""
        if "lm" in self.stage.trainable:
            return
        if not any(r.images or r.videos for r in self.dataset.records):
            raise TrainError(f"stage '{self.stage.name}' trains only {self.stage.trainable}, but its data "
                             f"({self.stage.data}) has no images or videos, so nothing would learn; add 'lm' to "
                             "its trainable parts or give it image/video samples")

    def _warn_if_aligning_to_the_untrained_lm(self) -> None:
        """LLaVA's stage 1 trains the connector against a pretrained LM; against a random one it
        teaches the connector nothing and can push the visual tokens off the LM's scale."""
        if "connector" in self.stage.trainable and "lm" not in self.stage.trainable:
            tqdm.write(f"warning: stage '{self.stage.name}' trains the connector against an LM that has never been "
                       "trained (no --init): alignment needs a pretrained LM (hybrid-convert one, and pass it with "
                       "--init), or train the LM in this stage too", file=sys.stderr)

    def _wrap(self) -> nn.Module:
        """The module the loop calls: the `LossStep`, under DDP or sharded by FSDP with several processes."""
        if self.dist.world_size == 1:
            return LossStep(self.model)
        if self.train.parallel == "fsdp":
            return fsdp.shard(self.model, LossStep, bf16=self._bf16())
        return DistributedDataParallel(LossStep(self.model), find_unused_parameters=True)

    def _resume(self, directory: Path, optimizer) -> Progress:
        load_weights(self.model, weight_files(directory), source=str(directory), place=fsdp.shard_like)
        progress = load_state(directory, self.model, optimizer)
        if progress.stage != self.stage.name:
            raise TrainError(f"{directory} is from stage '{progress.stage}', not '{self.stage.name}': pass --stage")
        if progress.world_size != self.dist.world_size:
            raise TrainError(f"{directory} was written by {progress.world_size} process(es); resume with the same number")
        return progress

    def _loop(self, step_module, optimizer, progress: Progress) -> None:
        stream = self.batches.iterate(progress.epoch, progress.batch)
        bar = tqdm(total=self.stage.steps, initial=progress.step, desc=f"stage {self.stage.name}",
                   disable=not self.dist.main, dynamic_ncols=True)
        metrics = self.train.path(self.train.output_dir) / "metrics.jsonl"
        skipped, nonfinite_in_a_row = 0, 0
        while progress.step < self.stage.steps:
            t0 = time.perf_counter()
            factor = lr_factor(progress.step, self.stage)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            loss, tokens, skipped_now, record_ids = self._accumulate(step_module, stream, progress)
            skipped += skipped_now
            nonfinite_in_a_row = 0 if math.isfinite(loss) else nonfinite_in_a_row + 1
            if nonfinite_in_a_row:
                self._nonfinite(progress, optimizer, record_ids, nonfinite_in_a_row)
                continue
            if self.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], self.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.tokens += tokens
            rate = tokens / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}", tok_s=f"{rate:,.0f}")
            if self.dist.main and (progress.step % self.train.log_every == 0 or progress.step == self.stage.steps):
                _append_jsonl(metrics, {"stage": self.stage.name, "step": progress.step, "loss": loss,
                                        "lr": optimizer.param_groups[0]["lr"], "tokens": progress.tokens,
                                        "tok_s": rate, "skipped_too_long": skipped, "time": time.time()})
            if self.train.save_every and progress.step % self.train.save_every == 0 and progress.step < self.stage.steps:
                self._save(self.stage_dir / f"step-{progress.step:06d}", optimizer, progress)
                if self.dist.main:
                    self._prune()
                self.dist.barrier()
        bar.close()

    def _accumulate(self, step_module, stream, progress: Progress) -> tuple[float, int, int, list[str]]:
        """grad_accum micro-batches; the loss is normalised by the global number of target tokens,
        so any split of the same global batch over ranks and micro-batches gives the same gradient.
        Returns (loss, tokens, records skipped as too long, this rank's record ids)."""
        micro, skipped = [], 0
        for _ in range(self.stage.grad_accum):
            epoch, index, indices = next(stream)
            samples, n_skip = self._load(indices)
            micro.append(samples)
            skipped += n_skip
            progress.epoch, progress.batch = epoch, index + 1
        n_local = torch.tensor(float(sum(count_targets(s) for s in micro)))
        n_global = float(self.dist.all_reduce_sum(n_local.clone()))
        total, tokens = 0.0, 0
        if any(not samples for samples in micro) and self.dist.world_size > 1:
            raise DataError("a whole micro-batch was skipped as too long; under torchrun every rank needs data: "
                            "raise train.max_len or remove the long records")
        micro = [samples for samples in micro if samples]
        for i, samples in enumerate(micro):
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or self.dist.world_size == 1 else fsdp.no_sync(step_module)
            with sync, self._autocast():
                ce, aux = step_module(samples)
                loss = ce * self.dist.world_size / max(n_global, 1.0) + self.train.moe_aux_weight * aux / len(micro)
            if not loss.requires_grad:  # text-only samples in a stage that trains vision parts only
                loss = loss + _zero_on_trainable(self.model)
            loss.backward()
            total += float(ce.detach()) / max(n_global, 1.0)
            tokens += sum(s.n_tokens for s in samples)
        record_ids = [s.record_id for samples in micro for s in samples]
        return float(self.dist.all_reduce_sum(torch.tensor(total))), tokens, skipped, record_ids

    def _load(self, indices: list[int]) -> tuple[list[Sample], int]:
        samples = [self.dataset[i] for i in indices]
        kept = [s for s in samples if s.n_tokens <= self.max_len]
        if len(kept) < len(samples) and self.train.on_too_long == "fail":
            long = next(s for s in samples if s.n_tokens > self.max_len)
            raise DataError(f"record '{long.record_id}' needs {long.n_tokens} tokens, more than max_len {self.max_len} "
                            f"(set train.on_too_long: skip to skip such records)")
        return kept, len(samples) - len(kept)

    def _bf16(self) -> bool:
        return self.train.precision == "bf16" or (self.train.precision == "auto" and self.dist.device.type == "cuda")

    def _autocast(self):
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16) if self._bf16() else contextlib.nullcontext()

    def _nonfinite(self, progress: Progress, optimizer, record_ids: list[str], in_a_row: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        shown = ", ".join(record_ids[:8]) + (f" and {len(record_ids) - 8} more" if len(record_ids) > 8 else "")
        where = (f"stage '{self.stage.name}', step {progress.step + 1}, batch {progress.batch - 1} of epoch "
                 f"{progress.epoch} (records {shown})")
        if self.train.on_nonfinite == "stop":
            raise TrainError(f"non-finite loss at {where} (set train.on_nonfinite: skip to skip such batches)")
        if in_a_row >= MAX_NONFINITE_IN_A_ROW:  # skipping cannot help: the weights themselves are broken
            raise TrainError(f"non-finite loss on {in_a_row} batches in a row, the last at {where}: the weights "
                             f"have diverged; lower the learning rate or resume from an earlier checkpoint")
        tqdm.write(f"warning: non-finite loss at {where}: batch skipped")

    def _save(self, directory: Path, optimizer, progress: Progress, *, overwrite: bool = False) -> None:
        """Every rank calls this (gathering FSDP shards is collective); rank 0 writes."""
        weights, moments = fsdp.full_state(self.model, optimizer) if fsdp.is_sharded(self.model) else (None, None)
        if not self.dist.main:
            return
        save_checkpoint(self.model, self.config, directory, tokenizer=self.tokenizer, overwrite=overwrite,
                        weights=weights, write_extra=lambda tmp: save_state(tmp, self.model, optimizer, progress,
                                                                            moments=moments))

    def _prune(self) -> None:
        """Keep the last `keep_last` step checkpoints of this stage."""
        steps = sorted(self.stage_dir.glob("step-*"))
        for old in steps[:-self.train.keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def progress_at_end(progress: Progress, stage: StageConfig) -> Progress:
    return Progress(progress.stage, stage.steps, progress.epoch, progress.batch, progress.tokens, progress.world_size)


def _append_jsonl(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
