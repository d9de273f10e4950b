"""Labelled encoder tiles cut from the digits training data, for vision pretraining.

Documents give 32 px tiles of 2x2 digit cells (one label per image token: the image
connector keeps the encoder's 2x2 patch grid); video frames give one centred digit per
tile (one label: the video connector pools the frame to one token). Only training splits
are read, so evaluation digits stay unseen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hybrid_mllm.core.vision.image import normalize_tensor, to_tensor
from hybrid_mllm.train.pretrain_vision import LabelledTiles

from .render import CELL_PX, TILE_PX

PER_TILE = TILE_PX // CELL_PX  # digit cells per tile side


def digit_tiles(data: Path, encoder, *, limit: int = 3000) -> list[LabelledTiles]:
    """Up to `limit` document tiles and `limit` video frames, normalised for `encoder`."""
    return [_document_tiles(data, encoder, limit), _frame_tiles(data, encoder, limit)]


def _pixels(path: Path, encoder) -> torch.Tensor:
    return normalize_tensor(to_tensor(Image.open(path).convert("RGB")), encoder.mean, encoder.std)  # (3, H, W)


def _document_tiles(data: Path, encoder, limit: int) -> LabelledTiles:
    """Tiles of training pages whose grids are whole tiles, with their (2, 2) digit labels."""
    tiles, labels = [], []
    for line in (data / "train.jsonl").read_text().splitlines():
        record = json.loads(line)
        grid = np.array(record["grid"])
        rows, cols = grid.shape
        if rows % PER_TILE or cols % PER_TILE:
            continue
        page = _pixels(data / record["image"], encoder)
        for r in range(0, rows, PER_TILE):
            for c in range(0, cols, PER_TILE):
                tiles.append(page[:, CELL_PX * r:CELL_PX * r + TILE_PX, CELL_PX * c:CELL_PX * c + TILE_PX])
                labels.append(torch.from_numpy(grid[r:r + PER_TILE, c:c + PER_TILE]))
        if len(tiles) >= limit:
            break
    return LabelledTiles("document cells", torch.stack(tiles[:limit]), torch.stack(labels[:limit]).long())


def _frame_tiles(data: Path, encoder, limit: int) -> LabelledTiles:
    """Training video frames, each a (1, 1) label: its digit."""
    tiles, labels = [], []
    for line in (data / "video_train.jsonl").read_text().splitlines():
        record = json.loads(line)
        for k, digit in enumerate(record["frames"]):
            tiles.append(_pixels(data / record["video"] / f"frame_{k:03d}.png", encoder))
            labels.append(digit)
        if len(tiles) >= limit:
            break
    labels_t = torch.tensor(labels[:limit]).view(-1, 1, 1)
    return LabelledTiles("video frames", torch.stack(tiles[:limit]), labels_t, connector="video_connector")
