"""Supervised vision pretraining: teach the encoder and connectors to make class-separable tokens.

A model trained from scratch has no pretrained vision tower (a CLIP or SigLIP would be loaded
instead, see `hybrid-convert`). This trains the encoder and the connectors together, through a
throw-away linear head, to classify the object under each visual token: the tokens the LM
reads then carry the class from the first step of instruction tuning. LLaVA's stage 1 (the
connector alone, against the LM) cannot do this for an LM that is itself untrained.

Each `LabelledTiles` set is a batch of encoder tiles with one class per token of the
connector's output grid, and names the connector it goes through (``connector`` for image
tiles, ``video_connector`` for frames), so both token kinds share one head: the same class
is the same direction in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hybrid_mllm.core.mllm import HybridMLLM

HELD_OUT = 0.1  # share of each set kept for measuring the accuracy


@dataclass
class LabelledTiles:
    """pixels (N, 3, S, S) normalised for the encoder; labels (N, gh', gw') int64, one class per
    token of `connector`'s output grid."""

    name: str
    pixels: Tensor
    labels: Tensor
    connector: str = "connector"  # or "video_connector"


def pretrain_vision(model: HybridMLLM, sets: list[LabelledTiles], *, n_classes: int, steps: int,
                    batch_size: int = 32, lr: float = 3e-3, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Train ``model.encoder`` and the named connectors for `steps` AdamW steps, each on one
    batch of every set; the LM is not changed. Returns {set name: token accuracy on its
    held-out tenth}."""
    _check_grids(model, sets)
    generator = torch.Generator().manual_seed(seed)
    split = [_split(s, generator) for s in sets]
    connectors = {s.connector: getattr(model, s.connector) for s in sets}
    head = nn.Linear(model.lm.embed.embedding_dim, n_classes, device=sets[0].pixels.device)
    params = [*model.encoder.parameters(), *(p for c in connectors.values() for p in c.parameters()), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in tqdm(range(steps), desc="vision pretraining", disable=not progress):
        loss = torch.zeros(())
        for s, (pixels, labels, _, _) in zip(sets, split):
            idx = torch.randint(0, pixels.shape[0], (batch_size,), generator=generator)
            loss = loss + _loss(model, connectors[s.connector], head, pixels[idx], labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return {s.name: _accuracy(model, connectors[s.connector], head, pixels, labels)
                for s, (_, _, pixels, labels) in zip(sets, split)}


def _tokens(model: HybridMLLM, connector: nn.Module, pixels: Tensor) -> Tensor:
    """pixels (B, 3, S, S) -> visual tokens (B, gh', gw', d_model)."""
    return connector(model.encoder(pixels.to(model.lm.embed.weight.dtype)).patches)


def _loss(model, connector, head, pixels: Tensor, labels: Tensor) -> Tensor:
    logits = head(_tokens(model, connector, pixels))  # (B, gh', gw', n_classes)
    return F.cross_entropy(logits.flatten(0, 2), labels.flatten())


def _accuracy(model, connector, head, pixels: Tensor, labels: Tensor) -> float:
    predicted = torch.cat([head(_tokens(model, connector, pixels[i:i + 256])).argmax(-1)
                           for i in range(0, pixels.shape[0], 256)])
    return float((predicted == labels).float().mean())


def _split(tiles: LabelledTiles, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train pixels, train labels, held-out pixels, held-out labels), shuffled."""
    order = torch.randperm(tiles.pixels.shape[0], generator=generator)
    n_held = max(1, int(len(order) * HELD_OUT))
    held, train = order[:n_held], order[n_held:]
    return tiles.pixels[train], tiles.labels[train], tiles.pixels[held], tiles.labels[held]


def _check_grids(model: HybridMLLM, sets: list[LabelledTiles]) -> None:
    if model.encoder is None:
        raise ValueError("vision pretraining needs a model with a vision encoder")
    for s in sets:
        grid = getattr(model, s.connector).out_grid(model.encoder.grid)
        if s.pixels.shape[0] < 2 or tuple(s.labels.shape[1:]) != tuple(grid):
            raise ValueError(f"vision pretraining set '{s.name}': needs >= 2 tiles with labels of shape (N, {grid[0]}, "
                             f"{grid[1]}) (the {s.connector}'s token grid), got {tuple(s.labels.shape)}")
