"""The multimodal model: a hybrid LM and, with vision, an encoder, two connectors and two learned embeddings.

``image_newline`` ends each row of an image's tile grid and ``frame_separator`` each video
frame. How visual tokens are assembled and spliced into the text is not here but in
`hybrid_mllm.runtime.splice`, which the PyTorch model and the exported ones share.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .model import HybridLM, LMOutput

ENCODER_BATCH = 256  # tiles or frames per encoder call: bounds activation memory for 4K images


class HybridMLLM(nn.Module):
    """A hybrid LM with an optional vision encoder and connectors (None: text only)."""

    def __init__(self, lm: HybridLM, encoder: nn.Module | None = None, connector: nn.Module | None = None,
                 video_connector: nn.Module | None = None, *, image_token_id: int, video_token_id: int,
                 newline: bool = True, grid_pos: bool = False):
        super().__init__()
        self.lm, self.encoder, self.connector, self.video_connector = lm, encoder, connector, video_connector
        self.image_token_id, self.video_token_id = image_token_id, video_token_id
        d_model = lm.embed.embedding_dim
        factory = {"device": lm.embed.weight.device, "dtype": lm.embed.weight.dtype}
        vision = encoder is not None
        self.image_newline = nn.Parameter(torch.randn(d_model, **factory) * 0.02) if vision and newline else None
        self.frame_separator = nn.Parameter(torch.randn(d_model, **factory) * 0.02) if vision else None
        self.grid_pos = grid_pos

    @property
    def has_vision(self) -> bool:
        return self.encoder is not None

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """ids (...) -> token embeddings (..., d_model), on the model's device."""
        return self.lm.embed(ids.to(self.lm.embed.weight.device))

    def encode_pixels(self, pixels: Tensor, *, video: bool) -> tuple[Tensor, Tensor]:
        """pixels (N, 3, S, S) -> connector grid (N, gh', gw', d), prefix tokens (N, P, d),
        through the video connector for frames, the image connector for tiles."""
        connector = self.video_connector if video else self.connector
        grids, prefixes = [], []
        pixels = pixels.to(self.lm.embed.weight)
        for start in range(0, pixels.shape[0], ENCODER_BATCH):
            out = self.encoder(pixels[start:start + ENCODER_BATCH])
            grids.append(connector(out.patches))
            prefixes.append(connector(out.prefix[:, :, None, :])[:, :, 0] if out.prefix.shape[1] else
                            out.prefix.new_zeros(out.prefix.shape[0], 0, grids[-1].shape[-1]))
        return torch.cat(grids), torch.cat(prefixes)

    def forward(self, inputs_embeds: Tensor, mask: Tensor | None = None, *, state=None,
                num_logits: int | None = None) -> LMOutput:
        """inputs_embeds (B, L, d), mask (B, L) bool (False at padding) -> the LM's output."""
        return self.lm(inputs_embeds=inputs_embeds, mask=mask, state=state, num_logits=num_logits)
