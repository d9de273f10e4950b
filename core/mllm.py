"""The multimodal model: encoder -> connector -> visual tokens spliced into the text -> hybrid LM.

An image arrives as LLaVA-NeXT "anyres" tiles (a thumbnail plus a grid of tiles, see
`hybrid_mllm.core.vision.anyres`) and becomes: the thumbnail's tokens, then the tile grid
with its padding removed and a learned ``image_newline`` embedding after every row (or, in
the ``single`` layout of LLaVA-1.5, the thumbnail's tokens alone). A
video arrives as frames; each frame becomes its (pooled) tokens followed by a learned
``frame_separator``. Each ``<image>`` / ``<video>`` placeholder id in the text is replaced
by its item's tokens, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import InputError
from .model import HybridLM, LMOutput
from .vision.anyres import AnyresTiles, tiles_to_grid, unpad_features

IGNORE = -100  # label of positions without loss (visual tokens, prompts, padding)
ENCODER_BATCH = 256  # tiles or frames per encoder call: bounds activation memory for 4K images


@dataclass
class VideoClip:
    """Frames of one video, normalised for the encoder: pixels (T, 3, S, S)."""

    pixels: Tensor


Visual = AnyresTiles | VideoClip


@dataclass
class Batch:
    """A left-padded batch ready for the LM: embeds (B, L, d), mask (B, L) bool, labels (B, L)."""

    embeds: Tensor
    mask: Tensor
    labels: Tensor | None
    n_visual: list[int]  # visual tokens per sample


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

    def _encode(self, pixels: Tensor, connector: nn.Module) -> tuple[Tensor, Tensor]:
        """pixels (N, 3, S, S) -> connector grid (N, gh', gw', d), prefix tokens (N, P, d)."""
        grids, prefixes = [], []
        pixels = pixels.to(self.lm.embed.weight.dtype)
        for start in range(0, pixels.shape[0], ENCODER_BATCH):
            out = self.encoder(pixels[start:start + ENCODER_BATCH])
            grids.append(connector(out.patches))
            prefixes.append(connector(out.prefix[:, :, None, :])[:, :, 0] if out.prefix.shape[1] else
                            out.prefix.new_zeros(out.prefix.shape[0], 0, grids[-1].shape[-1]))
        return torch.cat(grids), torch.cat(prefixes)

    def encode_image(self, tiles: AnyresTiles) -> Tensor:
        """Anyres tiles -> visual tokens (T, d_model): [CLS], thumbnail (unless left out), unpadded
        grid with row ends."""
        return self._image_tokens(tiles, *self._encode(tiles.pixels, self.connector))

    def encode_video(self, clip: VideoClip) -> Tensor:
        """Frames -> visual tokens (T, d_model): per frame [CLS], pooled tokens, frame separator."""
        return self._video_tokens(*self._encode(clip.pixels, self.video_connector))

    def encode_visuals(self, items: list[Visual]) -> list[Tensor]:
        """Encode many items with one encoder pass per kind (images, videos): far fewer,
        larger calls than one per item. Returns each item's tokens, in order."""
        if items and self.encoder is None:
            raise InputError("this model has no vision encoder, so it cannot take images or videos "
                             "(its config has no 'vision:' section)")
        out: list[Tensor | None] = [None] * len(items)
        for is_video, connector, assemble in ((False, self.connector, self._image_tokens),
                                              (True, self.video_connector, self._video_tokens)):
            picked = [i for i, item in enumerate(items) if isinstance(item, VideoClip) == is_video]
            if not picked:
                continue
            grid, prefix = self._encode(torch.cat([items[i].pixels for i in picked]), connector)
            sizes = [items[i].pixels.shape[0] for i in picked]
            for i, g, p in zip(picked, grid.split(sizes), prefix.split(sizes)):
                out[i] = assemble(items[i], g, p) if not is_video else assemble(g, p)
        return out

    def _image_tokens(self, tiles: AnyresTiles, grid: Tensor, prefix: Tensor) -> Tensor:
        """grid (1 + R*C, gh, gw, d) from the connector, prefix (1 + R*C, P, d) -> (T, d);
        (R*C, ...) each when the tiles come without a thumbnail."""
        rows, cols = tiles.grid
        thumb = torch.cat([prefix[0], grid[0].flatten(0, 1)]) if tiles.thumbnail else grid.new_zeros(0, grid.shape[-1])
        if rows * cols == 0:  # single layout: the thumbnail's tokens only
            return thumb
        big = tiles_to_grid(grid[1:] if tiles.thumbnail else grid, rows, cols)  # (R*gh, C*gw, d)
        big = unpad_features(big, tiles.content, tiles.canvas_size, rule=tiles.unpad,
                             image_size=tiles.image_size)  # (H', W', d)
        if self.grid_pos:
            big = with_cue(big)
        if self.image_newline is not None:
            big = torch.cat([big, self.image_newline.expand(big.shape[0], 1, -1)], dim=1)  # a row-end token per row
        return torch.cat([thumb, big.flatten(0, 1)])

    def _video_tokens(self, grid: Tensor, prefix: Tensor) -> Tensor:
        """grid (F, gh', gw', d), prefix (F, P, d) -> (F * (P + gh'*gw' + 1), d)."""
        sep = self.frame_separator.expand(grid.shape[0], 1, -1)
        tokens = torch.cat([prefix, grid.flatten(1, 2)], dim=1)  # (F, P + gh'*gw', d)
        if self.grid_pos:  # the frame number as the row cue, shared by the frame's tokens
            tokens = with_cue(tokens[:, None])[:, 0]
        return torch.cat([tokens, sep], dim=1).flatten(0, 1)

    def embed(self, input_ids: list[Tensor], visuals: list[list[Visual]] | None = None,
              labels: list[Tensor] | None = None) -> Batch:
        """Splice visual tokens into each sample's text embeddings and left-pad the batch.

        input_ids[i]: (L_i,) with one placeholder id per visual item; visuals[i]: its items
        in order; labels[i]: (L_i,) or None. Returns a `Batch` (left padding, mask False there).
        """
        visuals = visuals or [[] for _ in input_ids]
        flat = self.encode_visuals([item for items in visuals for item in items])
        seqs, labs, counts, start = [], [], [], 0
        for i, ids in enumerate(input_ids):
            tokens, start = flat[start:start + len(visuals[i])], start + len(visuals[i])
            emb, lab, n = self._splice(ids, visuals[i], tokens, None if labels is None else labels[i], i)
            seqs.append(emb)
            labs.append(lab)
            counts.append(n)
        embeds, mask = _left_pad(seqs, 0.0)
        out_labels = _left_pad(labs, IGNORE)[0] if labels is not None else None
        return Batch(embeds, mask, out_labels, counts)

    def _splice(self, ids: Tensor, items: list[Visual], encoded: list[Tensor], labels: Tensor | None, index: int):
        ids = ids.to(self.lm.embed.weight.device)
        is_slot = (ids == self.image_token_id) | (ids == self.video_token_id)
        slots = is_slot.nonzero().flatten().tolist()
        if len(slots) != len(items):
            raise InputError(f"sample {index}: {len(slots)} <image>/<video> placeholder(s) in the text but "
                             f"{len(items)} image/video item(s) given")
        text = self.lm.embed(ids.masked_fill(is_slot, 0))
        pieces, label_pieces, start, n_visual = [], [], 0, 0
        for slot, item, tokens in zip(slots, items, encoded):
            want_video = bool(ids[slot] == self.video_token_id)
            if want_video != isinstance(item, VideoClip):
                kind = "a video" if want_video else "an image"
                raise InputError(f"sample {index}: placeholder {len(pieces) // 2 + 1} expects {kind}")
            tokens = tokens.to(text.dtype)
            pieces += [text[start:slot], tokens]
            if labels is not None:
                label_pieces += [labels[start:slot], labels.new_full((tokens.shape[0],), IGNORE)]
            n_visual += tokens.shape[0]
            start = slot + 1
        pieces.append(text[start:])
        if labels is not None:
            label_pieces.append(labels[start:])
        return torch.cat(pieces), (torch.cat(label_pieces) if labels is not None else None), n_visual

    def forward(self, batch: Batch, *, state=None, num_logits: int | None = None) -> LMOutput:
        return self.lm(inputs_embeds=batch.embeds, mask=batch.mask, state=state, num_logits=num_logits)


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
    defined for any grid size, so row/column positions over the whole anyres grid are explicit;
    each sin/cos channel has amplitude `scale`. -> (rows, cols, dim)

    Every frequency is fast (0.5 to 3 radians per row, spaced geometrically, so the channels
    never line up again as an evenly spaced set would): neighbouring rows get cues with
    cosine 0.16, any two of the first 64 at most 0.25 and of the first 256 at most 0.33, so
    one dot product picks out a row. With a transformer's frequencies (falling geometrically
    from 1 to 0.01) most channels turn slowly and neighbours have cosine 0.94. Handed the
    asked cell's address (`benchmarks/probe_lookup.py --control address`), the digits
    attention-only model found the cell in 33 % of held-out pages at step 500 (of 1500)
    with those, and in 86 % after 600 steps with these (benchmarks/RESULTS.md)."""
    half = dim // 2
    freqs = CUE_FREQ_MIN * (CUE_FREQ_MAX / CUE_FREQ_MIN) ** torch.linspace(0, 1, half // 2)  # (half/2,)

    def embed(n: int) -> Tensor:
        angle = torch.arange(n, dtype=torch.float32)[:, None] * freqs  # (n, half/2)
        return torch.cat([angle.sin(), angle.cos()], dim=-1)  # (n, half)

    pos = torch.zeros(rows, cols, dim)
    pos[:, :, :half] = embed(rows)[:, None, :]
    pos[:, :, half:2 * half] = embed(cols)[None, :, :]
    return pos * scale


def _left_pad(seqs: list[Tensor], value: float) -> tuple[Tensor, Tensor]:
    """Stack (L_i, ...) tensors into (B, L_max, ...), padding on the left; mask (B, L_max) True on data."""
    length = max(s.shape[0] for s in seqs)
    out = seqs[0].new_full((len(seqs), length, *seqs[0].shape[1:]), value)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, length - s.shape[0]:] = s
        mask[i, length - s.shape[0]:] = True
    return out, mask
