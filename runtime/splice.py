"""Visual tokens spliced into the text: the one implementation every runtime calls.

An image arrives as LLaVA-NeXT "anyres" tiles (a thumbnail plus a grid of tiles, see
`hybrid_mllm.core.vision.anyres`) and becomes: the thumbnail's tokens, then the tile grid
with its padding removed and a learned ``image_newline`` embedding after every row (or, in
the ``single`` layout of LLaVA-1.5, the thumbnail's tokens alone). A video arrives as
frames; each frame becomes its (pooled) tokens followed by a learned ``frame_separator``.
Each ``<image>`` / ``<video>`` placeholder id in the text is replaced by its item's tokens,
in order, and the samples are left-padded into one batch.

The functions take any `Multimodal`: the PyTorch `HybridMLLM` (training and the PyTorch
runtime) and the exported model of ONNX Runtime / TensorRT (`hybrid_mllm.runtime.onnx`)
differ only in how they embed token ids and run the encoder and connectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from hybrid_mllm.core.errors import InputError
from hybrid_mllm.core.text import IGNORE_INDEX
from hybrid_mllm.core.vision import AnyresTiles, VideoClip, Visual, tiles_to_grid, unpad_features

from .cue import with_cue


class Multimodal(Protocol):
    """What the splice needs from a model (PyTorch or exported)."""

    image_token_id: int
    video_token_id: int
    image_newline: Tensor | None  # (d,): after each row of an image's tile grid; None: no row ends
    frame_separator: Tensor | None  # (d,): after each video frame
    grid_pos: bool  # add the (row, column) cue of `hybrid_mllm.runtime.cue`

    @property
    def has_vision(self) -> bool: ...

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """ids (L,) -> embeddings (L, d)."""

    def encode_pixels(self, pixels: Tensor, *, video: bool) -> tuple[Tensor, Tensor]:
        """pixels (N, 3, S, S) -> connector grid (N, gh', gw', d), prefix tokens (N, P, d)."""


@dataclass
class Batch:
    """A left-padded batch ready for the LM: embeds (B, L, d), mask (B, L) bool, labels (B, L)."""

    embeds: Tensor
    mask: Tensor
    labels: Tensor | None
    n_visual: list[int]  # visual tokens per sample


def image_tokens(model: Multimodal, tiles: AnyresTiles, grid: Tensor, prefix: Tensor) -> Tensor:
    """grid (1 + R*C, gh, gw, d) from the connector, prefix (1 + R*C, P, d) -> tokens (T, d):
    [CLS], the thumbnail (unless left out), the unpadded grid with row ends. Without a
    thumbnail grid and prefix are (R*C, ...)."""
    rows, cols = tiles.grid
    thumb = torch.cat([prefix[0], grid[0].flatten(0, 1)]) if tiles.thumbnail else grid.new_zeros(0, grid.shape[-1])
    if rows * cols == 0:  # single layout: the thumbnail's tokens only
        return thumb
    big = tiles_to_grid(grid[1:] if tiles.thumbnail else grid, rows, cols)  # (R*gh, C*gw, d)
    big = unpad_features(big, tiles.content, tiles.canvas_size, rule=tiles.unpad,
                         image_size=tiles.image_size)  # (H', W', d)
    if model.grid_pos:
        big = with_cue(big)
    if model.image_newline is not None:
        row_end = model.image_newline.to(big).expand(big.shape[0], 1, -1)
        big = torch.cat([big, row_end], dim=1)  # a row-end token per row
    return torch.cat([thumb, big.flatten(0, 1)])


def video_tokens(model: Multimodal, grid: Tensor, prefix: Tensor) -> Tensor:
    """grid (F, gh', gw', d), prefix (F, P, d) -> tokens (F * (P + gh'*gw' + 1), d)."""
    sep = model.frame_separator.to(grid).expand(grid.shape[0], 1, -1)
    tokens = torch.cat([prefix, grid.flatten(1, 2)], dim=1)  # (F, P + gh'*gw', d)
    if model.grid_pos:  # the frame number as the row cue, shared by the frame's tokens
        tokens = with_cue(tokens[:, None])[:, 0]
    return torch.cat([tokens, sep], dim=1).flatten(0, 1)


def encode_visuals(model: Multimodal, items: list[Visual]) -> list[Tensor]:
    """Each item's visual tokens (T_i, d), in order, with one encoder pass per kind (images,
    videos): far fewer, larger calls than one per item."""
    if items and not model.has_vision:
        raise InputError("this model has no vision encoder, so it cannot take images or videos "
                         "(its config has no 'vision:' section)")
    out: list[Tensor | None] = [None] * len(items)
    for video in (False, True):
        picked = [i for i, item in enumerate(items) if isinstance(item, VideoClip) == video]
        if not picked:
            continue
        grid, prefix = model.encode_pixels(torch.cat([items[i].pixels for i in picked]), video=video)
        sizes = [items[i].pixels.shape[0] for i in picked]
        for i, g, p in zip(picked, grid.split(sizes), prefix.split(sizes)):
            out[i] = video_tokens(model, g, p) if video else image_tokens(model, items[i], g, p)
    return out


def splice(model: Multimodal, ids: Tensor, items: list[Visual], encoded: list[Tensor], labels: Tensor | None, *,
           index: int = 0) -> tuple[Tensor, Tensor | None, int]:
    """One sample: ids (L,) with a placeholder per item, `encoded` the items' tokens ->
    embeds (L', d), labels (L',) with `IGNORE_INDEX` on visual tokens (or None), visual count.
    `index` names the sample in errors."""
    is_slot = (ids == model.image_token_id) | (ids == model.video_token_id)
    slots = is_slot.nonzero().flatten().tolist()
    if len(slots) != len(items):
        raise InputError(f"sample {index}: {len(slots)} <image>/<video> placeholder(s) in the text but "
                         f"{len(items)} image/video item(s) given")
    text = model.embed_tokens(ids.masked_fill(is_slot, 0))  # (L, d)
    pieces, label_pieces, start, n_visual = [], [], 0, 0
    for n, (slot, item, tokens) in enumerate(zip(slots, items, encoded), 1):
        want_video = bool(ids[slot] == model.video_token_id)
        if want_video != isinstance(item, VideoClip):
            raise InputError(f"sample {index}: placeholder {n} expects {'a video' if want_video else 'an image'}")
        tokens = tokens.to(text)
        pieces += [text[start:slot], tokens]
        if labels is not None:
            label_pieces += [labels[start:slot], labels.new_full((tokens.shape[0],), IGNORE_INDEX)]
        n_visual += tokens.shape[0]
        start = slot + 1
    pieces.append(text[start:])
    if labels is not None:
        label_pieces.append(labels[start:])
    return torch.cat(pieces), (torch.cat(label_pieces) if labels is not None else None), n_visual


def embed(model: Multimodal, input_ids: list[Tensor], visuals: list[list[Visual]] | None = None,
          labels: list[Tensor] | None = None) -> Batch:
    """Splice visual tokens into each sample's text embeddings and left-pad the batch.

    input_ids[i]: (L_i,) with one placeholder id per visual item; visuals[i]: its items in
    order; labels[i]: (L_i,) or None. Returns a `Batch` (left padding, mask False there).
    """
    visuals = visuals or [[] for _ in input_ids]
    flat = encode_visuals(model, [item for items in visuals for item in items])
    seqs, labs, counts, start = [], [], [], 0
    for i, ids in enumerate(input_ids):
        tokens, start = flat[start:start + len(visuals[i])], start + len(visuals[i])
        emb, lab, n = splice(model, ids, visuals[i], tokens, None if labels is None else labels[i], index=i)
        seqs.append(emb)
        labs.append(lab)
        counts.append(n)
    embeds, mask = left_pad(seqs, 0.0)
    out_labels = left_pad(labs, IGNORE_INDEX)[0] if labels is not None else None
    return Batch(embeds, mask, out_labels, counts)


def left_pad(seqs: list[Tensor], value: float) -> tuple[Tensor, Tensor]:
    """Stack (L_i, ...) tensors into (B, L_max, ...), padding on the left; mask (B, L_max) True on data."""
    length = max(s.shape[0] for s in seqs)
    out = seqs[0].new_full((len(seqs), length, *seqs[0].shape[1:]), value)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, length - s.shape[0]:] = s
        mask[i, length - s.shape[0]:] = True
    return out, mask


def encode_image(model: Multimodal, tiles: AnyresTiles) -> Tensor:
    """One image's visual tokens (T, d)."""
    return encode_visuals(model, [tiles])[0]


def encode_video(model: Multimodal, clip: VideoClip) -> Tensor:
    """One video's visual tokens (T, d): per frame [CLS], pooled tokens, frame separator."""
    return encode_visuals(model, [clip])[0]
