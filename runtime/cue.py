"""The grid cue (``vision.grid_pos``): fixed 2-D sinusoidal (row, column) cues added to visual tokens.

Over the whole anyres grid of an image the cue makes each token's row and column explicit;
for a video, the frame number is the row cue, shared by the frame's tokens. What the cue
does for the digits task is measured in benchmarks/RESULTS.md (``benchmarks/probe_lookup.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

CUE_STRENGTH = 0.5  # the grid cue's RMS as a fraction of the visual tokens' RMS
CUE_FREQ_MIN, CUE_FREQ_MAX = 0.5, 3.0  # radians per row / column (see grid_position)


def with_cue(tokens: Tensor) -> Tensor:
    """tokens (R, C, ..., d) + the 2-D cue of each (row, column), scaled to `CUE_STRENGTH` of the
    tokens' own RMS: connector outputs can be far larger than text embeddings, and a cue of
    fixed size would then be lost after the LM's RMSNorm."""
    rms = tokens.detach().float().pow(2).mean().sqrt()
    cue = grid_position(tokens.shape[0], tokens.shape[1], tokens.shape[-1], scale=CUE_STRENGTH * 2 ** 0.5)
    return tokens + (cue * rms).to(tokens).view(*cue.shape[:2], *[1] * (tokens.dim() - 3), cue.shape[-1])


def grid_position(rows: int, cols: int, dim: int, scale: float) -> Tensor:
    """Fixed 2-D sinusoidal cues (row in the first half of the channels, column in the second),
    defined for any grid size; each sin/cos channel has amplitude `scale`. -> (rows, cols, dim)

    Every frequency is fast (0.5 to 3 radians per row, spaced geometrically, so the channels
    never line up again as an evenly spaced set would): neighbouring rows get cues with
    cosine 0.16, any two of the first 64 at most 0.25 and of the first 256 at most 0.33, so
    one dot product picks out a row. With a transformer's frequencies (falling geometrically
    from 1 to 0.01) most channels turn slowly and neighbours have cosine 0.94."""
    half = dim // 2
    freqs = CUE_FREQ_MIN * (CUE_FREQ_MAX / CUE_FREQ_MIN) ** torch.linspace(0, 1, half // 2)  # (half/2,)

    def embed(n: int) -> Tensor:
        angle = torch.arange(n, dtype=torch.float32)[:, None] * freqs  # (n, half/2)
        return torch.cat([angle.sin(), angle.cos()], dim=-1)  # (n, half)

    pos = torch.zeros(rows, cols, dim)
    pos[:, :, :half] = embed(rows)[:, None, :]
    pos[:, :, half:2 * half] = embed(cols)[None, :, :]
    return pos * scale
