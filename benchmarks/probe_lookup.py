"""How fast does a digits-demo LM learn "What digit is in row r, column c?", with the vision path taken away?

The demo's models read single digits (the encoder's cell accuracy is 100 %) but not positions.
This probe trains only the LM, on synthetic documents: each grid cell becomes one learned
vector per digit class (standing in for encoder + connector, at the connector outputs' norm),
plus the model's own 2-D grid cue and a row-end token per row, spliced into the demo's exact
question, template and tokenizer. Grid shapes are the training set's (`TRAIN_GRIDS`).

Two controls locate the bottleneck:
  --control mark      the asked cell also gets a fixed random vector: a lookup by content,
                      with a query that needs nothing from the question;
  --control address   the position that predicts the answer also gets the asked cell's
                      cue: the exact address is handed over, and only its match against the
                      cells' cues is left to learn.
It prints loss and accuracy on 400 held-out documents as it goes, beside the accuracy of a
reader that knows every digit but no position (it names a random cell of the grid): 10 %
would be chance, but a model at that second figure has learned to read, not to look up.

    python benchmarks/probe_lookup.py                                 # digits-hybrid, 300 steps
    python benchmarks/probe_lookup.py --preset digits-attention --control mark
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.cli import check_at_least_one, run_cli
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.core.text import IGNORE_INDEX as IGNORE
from hybrid_mllm.core.text import get_template
from hybrid_mllm.demo.data_digits import TRAIN_GRIDS
from hybrid_mllm.runtime.cue import grid_position, with_cue
from hybrid_mllm.train.config import parse_train
from hybrid_mllm.train.loop import lr_factor

CELL_NORM = 50.0  # the connector outputs' norm in the trained demo (35..75)


class Probe(nn.Module):
    """The LM of a digits preset plus learned digit-cell vectors; builds (embeds, labels) of a document."""

    def __init__(self, preset: str, control: str, seed: int):
        super().__init__()
        config = load_config(resolve_config_path(preset))
        if config.vision is None:
            raise HybridError(f"--preset {preset}: has no 'vision:' section, so no grid cue to probe; use "
                              "digits-hybrid, digits-attention or a copy of them")
        model, self.tokenizer = build_mllm(config, seed=seed)
        self.lm, self.newline = model.lm, model.image_newline
        self.template = get_template(config.text.template)
        self.train_config = parse_train(config.train, source=preset, base_dir=".")
        d_model = self.lm.embed.embedding_dim
        self.cells = nn.Parameter(torch.randn(10, d_model) * CELL_NORM / d_model ** 0.5)  # (10, d)
        self.register_buffer("mark", torch.randn(d_model) * CELL_NORM / d_model ** 0.5)  # (d,)
        self.control = control

    def document(self, rng: random.Random) -> tuple[Tensor, Tensor, float]:
        """One random grid and question -> embeds (L, d), labels (L,) (the answer digit and end
        marker), and the share of the grid's cells that hold the answer digit."""
        rows, cols = TRAIN_GRIDS[rng.randrange(len(TRAIN_GRIDS))]
        grid = torch.tensor([[rng.randrange(10) for _ in range(cols)] for _ in range(rows)])  # (rows, cols)
        r, c = rng.randrange(rows), rng.randrange(cols)
        conversation = [{"from": "human", "value": f"<image>\nWhat digit is in row {r + 1}, column {c + 1}?"},
                        {"from": "gpt", "value": str(int(grid[r, c]))}]
        rendered = self.template.render(conversation, self.tokenizer)
        ids, labels = torch.tensor(rendered.ids), torch.tensor(rendered.labels)
        visual = with_cue(self.cells[grid])  # (rows, cols, d)
        if self.control == "mark":
            visual = visual + F.one_hot(torch.tensor(r * cols + c), rows * cols).view(rows, cols, 1) * self.mark
        visual = torch.cat([visual, self.newline.expand(rows, 1, -1)], dim=1).flatten(0, 1)  # (rows*(cols+1), d)
        slot = int((ids == self.tokenizer.image_id).nonzero()[0])
        embeds = torch.cat([self.lm.embed(ids[:slot]), visual, self.lm.embed(ids[slot + 1:])])
        labels = torch.cat([labels[:slot], labels.new_full((len(visual),), IGNORE), labels[slot + 1:]])
        if self.control == "address":
            asks = int((labels != IGNORE).nonzero()[0]) - 1  # the position whose logits give the answer
            cue = grid_position(rows, cols, embeds.shape[-1], scale=1.0)[r, c]
            embeds = embeds + F.one_hot(torch.tensor(asks), len(embeds))[:, None] * cue
        return embeds, labels, float((grid == grid[r, c]).float().mean())

    def batch(self, rng: random.Random, size: int) -> tuple[Tensor, Tensor, Tensor, float]:
        """-> embeds (B, L, d), mask (B, L), labels (B, L), left-padded like `HybridMLLM.embed`,
        and the summed answer-digit shares (see `document`)."""
        docs = [self.document(rng) for _ in range(size)]
        length = max(len(e) for e, _, _ in docs)
        embeds = torch.zeros(size, length, docs[0][0].shape[-1])
        mask = torch.zeros(size, length, dtype=torch.bool)
        labels = torch.full((size, length), IGNORE)
        for i, (e, lab, _) in enumerate(docs):
            embeds[i, length - len(e):], mask[i, length - len(e):], labels[i, length - len(e):] = e, True, lab
        return embeds, mask, labels, sum(share for _, _, share in docs)

    def loss(self, embeds: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
        logits = self.lm(inputs_embeds=embeds, mask=mask).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)

    @torch.no_grad()
    def accuracy(self, n: int = 400, seed: int = 12345) -> tuple[float, float]:
        """(greedy answer digit right, a position-blind reader's expected accuracy), on `n`
        documents no training batch draws (their own stream)."""
        rng, correct, blind = random.Random(seed), 0, 0.0
        self.eval()
        for start in range(0, n, 50):
            embeds, mask, labels, shares = self.batch(rng, min(50, n - start))
            blind += shares
            logits = self.lm(inputs_embeds=embeds, mask=mask).logits  # (B, L, vocab)
            answer = (labels != IGNORE).float().argmax(1)  # (B,) the answer digit's position
            rows = torch.arange(len(labels))
            correct += int((logits[rows, answer - 1].argmax(-1) == labels[rows, answer]).sum())
        self.train()
        return correct / n, blind / n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits-hybrid", help="a digits preset (its LM and stage-2 lr / batch)")
    p.add_argument("--control", choices=["none", "mark", "address"], default="none",
                   help="none: the question alone; mark / address: see above (default none)")
    p.add_argument("--steps", type=int, default=300, help="training steps; the lr schedule spans them (default 300)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations (default 100)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and training pages (default 0)")
    args = p.parse_args(argv)
    check_at_least_one(("--steps", args.steps), ("--eval-every", args.eval_every))
    torch.manual_seed(args.seed)
    probe = Probe(args.preset, args.control, args.seed)
    stage = dataclasses.replace(probe.train_config.stages[-1], steps=args.steps)  # stage 2's lr, batch, warmup
    lr = stage.lr["lm"] if isinstance(stage.lr, dict) else stage.lr
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, betas=(0.9, 0.98),
                                  weight_decay=probe.train_config.weight_decay)
    rng, losses, t0 = random.Random(args.seed), [], time.perf_counter()
    print(f"{args.preset}, control {args.control}: lr {lr}, batch {stage.batch_size}, {args.steps} steps")
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, stage)
        loss = probe.loss(*probe.batch(rng, stage.batch_size)[:3])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), probe.train_config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            recent = losses[-args.eval_every:]
            accuracy, blind = probe.accuracy()
            print(f"step {step + 1:5d}  loss {sum(recent) / len(recent):.3f}  accuracy {accuracy:.1%}  "
                  f"(position-blind reader {blind:.1%}; {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
