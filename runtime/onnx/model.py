"""`OrtMLLM`: an export directory as a `hybrid_mllm.runtime.splice.Multimodal`.

Token embeddings come from the saved matrix, the connector grids from the vision graphs
(``encoder.onnx`` then ``image_connector.onnx`` / ``video_connector.onnx``), and the learned
row-end and frame-separator embeddings from their .npy files; the splice itself is the
runtime's own (`hybrid_mllm.runtime.splice`), the one the PyTorch model uses. The encoder
facts (`EncoderInfo`) and connector grids are what `VisualLoader` reads to tile and count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hybrid_mllm.core.mllm import ENCODER_BATCH

from .manifest import manifest_file


@dataclass(frozen=True)
class EncoderInfo:
    """The encoder facts the visual loader reads (tile size, patch grid, normalisation)."""

    image_size: int
    grid: tuple[int, int]
    out_dim: int
    num_prefix_tokens: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class OrtConnector:
    """A connector graph; ``out_grid`` as the manifest recorded it for the encoder's grid."""

    def __init__(self, session, grid: tuple[int, int], encoder_grid: tuple[int, int]):
        self.session, self.grid, self.encoder_grid = session, grid, encoder_grid

    def out_grid(self, grid) -> tuple[int, int]:
        if tuple(grid) != self.encoder_grid:
            raise ValueError(f"this exported connector knows the grid {self.encoder_grid} only, not {tuple(grid)}")
        return self.grid


class OrtMLLM:
    """The exported model: embeddings, vision graphs and learned embeddings (see the module doc).

    `open_session(graph_name)` opens one of the export's graphs (``encoder``, ...).
    """

    def __init__(self, out_dir: Path, manifest: dict, embeddings: np.ndarray, open_session):
        self.embeddings = torch.from_numpy(embeddings)  # (vocab, d)
        self.image_token_id = manifest["special_tokens"]["image"]
        self.video_token_id = manifest["special_tokens"]["video"]
        self.encoder = self.connector = self.video_connector = None
        self.image_newline = self.frame_separator = None
        self.grid_pos = False
        vision = manifest["vision"]
        if vision is None:
            return
        facts = vision["encoder"]
        self.encoder = EncoderInfo(facts["image_size"], tuple(facts["grid"]), facts["out_dim"],
                                   facts["num_prefix_tokens"], tuple(facts["mean"]), tuple(facts["std"]))
        self.encoder_session = open_session("encoder")
        self.connector = OrtConnector(open_session("image_connector"), tuple(facts["image_grid"]), self.encoder.grid)
        self.video_connector = OrtConnector(open_session("video_connector"), tuple(facts["video_grid"]),
                                            self.encoder.grid)
        self.image_newline = _load_optional(out_dir, vision["newline_file"])
        self.frame_separator = _load_optional(out_dir, vision["separator_file"])
        self.grid_pos = vision["grid_pos"]

    @property
    def has_vision(self) -> bool:
        return self.encoder is not None

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """ids (...) -> rows of the embedding matrix (..., d)."""
        return self.embeddings[ids.cpu()]

    def encode_pixels(self, pixels: Tensor, *, video: bool) -> tuple[Tensor, Tensor]:
        """pixels (N, 3, S, S) -> connector grid (N, gh', gw', d), prefix tokens (N, P, d)."""
        connector = self.video_connector if video else self.connector
        dtype = self.embeddings.numpy().dtype
        pixels_np = pixels.detach().cpu().numpy().astype(dtype)
        grids, prefixes = [], []
        for start in range(0, pixels_np.shape[0], ENCODER_BATCH):
            patches, prefix = self.encoder_session.run(None, {"pixels": pixels_np[start:start + ENCODER_BATCH]})
            feed = {"patches": patches, **({"prefix": prefix} if self.encoder.num_prefix_tokens else {})}
            out = connector.session.run(None, feed)
            grids.append(out[0])
            prefixes.append(out[1] if len(out) > 1 else np.zeros((patches.shape[0], 0, out[0].shape[-1]), dtype))
        return torch.from_numpy(np.concatenate(grids)), torch.from_numpy(np.concatenate(prefixes))


def _load_optional(out_dir: Path, name: str | None) -> Tensor | None:
    return None if name is None else torch.from_numpy(np.load(manifest_file(out_dir, name)))
