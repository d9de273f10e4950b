"""A few seconds of supervised encoder pretraining: classify the object in each cell of a tile.

For the digits demo: a tile of 32 px holds 2x2 digit cells; the encoder's patch features
over each cell are averaged and a linear head predicts the digit. Without this warm start
a from-scratch encoder learns nothing useful in a CPU-minutes budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm


def pretrain_cells(encoder: nn.Module, tiles: Tensor, labels: Tensor, *, n_classes: int, steps: int = 200,
                   batch_size: int = 64, lr: float = 3e-3, seed: int = 0, progress: bool = True) -> float:
    """Train `encoder` with a throw-away linear head. tiles: (N, 3, S, S) normalised,
    labels: (N, cr, cc) class per cell (the patch grid must divide into cr x cc cells).
    Returns the accuracy on the last batch."""
    gh, gw = encoder.grid
    cr, cc = labels.shape[1:]
    if gh % cr or gw % cc:
        raise ValueError(f"the encoder's {gh}x{gw} patch grid does not divide into {cr}x{cc} cells")
    head = nn.Linear(encoder.out_dim, n_classes)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    encoder.train()
    accuracy = 0.0
    for _ in tqdm(range(steps), desc="encoder pretraining", disable=not progress):
        idx = torch.randint(0, tiles.shape[0], (batch_size,), generator=g)
        patches = encoder(tiles[idx]).patches  # (B, gh, gw, d)
        cells = patches.reshape(batch_size, cr, gh // cr, cc, gw // cc, -1).mean(dim=(2, 4))  # (B, cr, cc, d)
        logits = head(cells)
        loss = F.cross_entropy(logits.reshape(-1, n_classes), labels[idx].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = float((logits.argmax(-1) == labels[idx]).float().mean())
    return accuracy
