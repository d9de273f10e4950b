"""Images and videos named in a prompt -> the model's visual inputs, with their token counts.

Shared by inference (`hybrid_mllm.runtime.pipeline`) and training data loading, so both tile
and sample the same way. Token counts are known before any encoding, so a prompt that
would not fit the context is refused early.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hybrid_mllm.core.config_vision import VisionConfig
from hybrid_mllm.core.errors import InputError
from hybrid_mllm.core.vision import (
    VideoClip,
    Visual,
    anyres_tiles,
    load_image,
    load_video,
    normalize,
    num_visual_tokens,
    select_grid,
    single_view,
)

from .splice import Multimodal


@dataclass
class Overrides:
    """Inference-time settings that differ from training (the paper's "train low, run high")."""

    max_tiles: int | None = None
    max_frames: int | None = None
    fps: float | None = None
    max_visual_tokens: int | None = None  # refuse a request with more (None: the config's text.max_visual_tokens)


@dataclass(frozen=True)
class ItemSize:
    """What a loaded item's token count depends on: an image's (width, height), a video's frames."""

    image_size: tuple[int, int] | None = None
    frames: int = 0


class VisualLoader:
    """Loads the files for the placeholders of a token sequence, in order."""

    def __init__(self, model: Multimodal, vision: VisionConfig | None):
        self.model, self.vision = model, vision

    def load(self, ids: Sequence[int], images: Sequence[str], videos: Sequence[str],
             overrides: Overrides | None = None) -> tuple[list[Visual], int]:
        """Returns the visual items in placeholder order and their total token count."""
        items, sizes = self.load_sized(ids, images, videos, overrides)
        return items, self.count(sizes, overrides or Overrides())

    def load_sized(self, ids: Sequence[int], images: Sequence[str], videos: Sequence[str],
                   overrides: Overrides | None = None) -> tuple[list[Visual], list[ItemSize]]:
        """Returns the visual items in placeholder order and their sizes (see `count`)."""
        overrides = overrides or Overrides()
        image_id, video_id = self.model.image_token_id, self.model.video_token_id
        n_img, n_vid = sum(1 for t in ids if t == image_id), sum(1 for t in ids if t == video_id)
        if (n_img, n_vid) != (len(images), len(videos)):
            raise InputError(f"{n_img} <image> and {n_vid} <video> placeholder(s) but {len(images)} image(s) and "
                             f"{len(videos)} video(s)")
        if (images or videos) and not self.model.has_vision:
            raise InputError("this model has no vision encoder, so it cannot take images or videos")
        if images and self.single and overrides.max_tiles:
            raise InputError("--max-tiles applies to anyres models; this one takes each image as a single tile "
                             "(vision.layout: single), so leave --max-tiles out")
        image_iter, video_iter = iter(images), iter(videos)
        items, sizes = [], []
        for token in ids:
            if token == image_id:
                item, size = self._image(next(image_iter), overrides)
            elif token == video_id:
                item, size = self._video(next(video_iter), overrides)
            else:
                continue
            items.append(item)
            sizes.append(size)
        return items, sizes

    def count(self, sizes: Sequence[ItemSize], overrides: Overrides) -> int:
        """Visual tokens of items of these sizes under `overrides` (a lower max_frames keeps
        that many of a video's frames), computed without loading anything."""
        return sum(self.image_tokens(s.image_size, overrides) if s.image_size else
                   min(s.frames, overrides.max_frames or s.frames) * self.frame_tokens() for s in sizes)

    def image_tokens(self, image_size: tuple[int, int], overrides: Overrides) -> int:
        encoder = self.model.encoder
        patch_grid = self.model.connector.out_grid(encoder.grid)
        if self.single:
            return patch_grid[0] * patch_grid[1] + encoder.num_prefix_tokens
        thumbnail = self.vision.thumbnail
        n = num_visual_tokens(image_size, encoder.image_size, patch_grid, newline=self.vision.newline,
                              unpad=self.vision.unpad, thumbnail=thumbnail, **self.tile_limits(overrides))
        return n + (encoder.num_prefix_tokens if thumbnail else 0)

    def frame_tokens(self) -> int:
        gh, gw = self.model.video_connector.out_grid(self.model.encoder.grid)
        return gh * gw + 1 + self.model.encoder.num_prefix_tokens

    @property
    def single(self) -> bool:
        """Images as one view each (LLaVA-1.5), not anyres tiles: --max-tiles does not apply."""
        return self.vision is not None and self.vision.layout == "single"

    def tile_limits(self, overrides: Overrides) -> dict:
        if overrides.max_tiles or not self.vision.pinpoints:
            return {"max_tiles": overrides.max_tiles or self.vision.max_tiles}
        return {"pinpoints": self.vision.pinpoints}

    def _image(self, path: str, overrides: Overrides) -> tuple[Visual, ItemSize]:
        v, encoder = self.vision, self.model.encoder
        image = load_image(path, max_pixels=v.max_pixels)
        size = ItemSize(image_size=tuple(image.size))
        if self.single:
            return single_view(image, encoder.image_size, mean=encoder.mean, std=encoder.std), size
        grid = select_grid(image.size, encoder.image_size, **self.tile_limits(overrides))
        tiles = anyres_tiles(image, encoder.image_size, grid, mean=encoder.mean, std=encoder.std, unpad=v.unpad,
                             thumbnail=v.thumbnail)
        return tiles, size

    def _video(self, path: str, overrides: Overrides) -> tuple[Visual, ItemSize]:
        v, encoder = self.vision, self.model.encoder
        frames = load_video(path, max_frames=overrides.max_frames or v.max_frames, fps=overrides.fps or v.fps,
                            max_pixels=v.max_pixels)
        pixels = torch.stack([normalize(f, encoder.image_size, encoder.mean, encoder.std) for f in frames.frames])
        return VideoClip(pixels), ItemSize(frames=len(frames.frames))
