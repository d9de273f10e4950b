"""`tiny` encoder: a small convolutional encoder that trains from scratch on a CPU in minutes.

Made for the digits demo (tiles of 32 px, a few 12 px digits each). Its stem normalises
(GroupNorm) so training starts fast, and it adds learned row and column embeddings to
every patch so position inside a tile survives pooling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrid_mllm.core.encoder import EncoderOutput


class TinyConvEncoder(nn.Module):
    """pixels (N, 3, S, S) -> conv stem (first conv strided by ``stem_stride``) -> patches of
    ``patch_size`` input pixels -> (N, S/p, S/p, width)."""

    def __init__(
        self,
        *,
        image_size: int = 32,
        patch_size: int = 8,
        width: int = 64,
        depth: int = 2,
        stem_stride: int = 1,
        frozen: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if image_size % patch_size or patch_size % stem_stride:
            raise ValueError(f"need patch_size ({patch_size}) | image_size ({image_size}) and "
                             f"stem_stride ({stem_stride}) | patch_size")
        factory = {"device": device, "dtype": dtype}
        self.image_size, self.out_dim = image_size, width
        self.grid = (image_size // patch_size,) * 2
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.num_prefix_tokens = 0
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, stride=stem_stride, padding=1, **factory),
                                   nn.GroupNorm(8, width, **factory), nn.GELU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1, **factory), nn.GroupNorm(8, width, **factory), nn.GELU()]
        self.stem = nn.Sequential(*layers)
        step = patch_size // stem_stride
        self.patchify = nn.Conv2d(width, width, step, stride=step, **factory)
        self.row_embed = nn.Parameter(torch.randn(self.grid[0], 1, width, **factory) * 0.02)
        self.col_embed = nn.Parameter(torch.randn(1, self.grid[1], width, **factory) * 0.02)
        if frozen:
            self.requires_grad_(False)

    def forward(self, pixels: Tensor) -> EncoderOutput:
        x = self.patchify(self.stem(pixels)).permute(0, 2, 3, 1)  # (N, gh, gw, width)
        x = x + self.row_embed + self.col_embed
        return EncoderOutput(x, x.new_zeros(x.shape[0], 0, x.shape[-1]))
