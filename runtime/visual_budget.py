"""A cap on a request's visual tokens (``--max-visual-tokens`` / ``text.max_visual_tokens``),
checked before anything is encoded; the refusal says which ``--max-tiles`` or
``--max-frames`` would bring the request under the cap."""

from __future__ import annotations

from dataclasses import replace

from hybrid_mllm.core.errors import ResourceError
from hybrid_mllm.core.vision import select_grid

from .visual_inputs import ItemSize, Overrides, VisualLoader


def check_visual_budget(loader: VisualLoader, sizes: list[ItemSize], overrides: Overrides, limit: int,
                        *, option: str = "--max-visual-tokens") -> None:
    total = loader.count(sizes, overrides)
    if total <= limit:
        return
    raise ResourceError(f"the request has {total:,} visual tokens, more than the limit of {limit:,} ({option}): "
                        f"{_fix(loader, sizes, overrides, limit)}")


def _fix(loader: VisualLoader, sizes: list[ItemSize], overrides: Overrides, limit: int) -> str:
    tiles = max((_tiles(loader, s, overrides) for s in sizes if s.image_size), default=0)
    frames = max((s.frames for s in sizes if not s.image_size), default=0)
    fixes = []
    for flag, field, current in (("--max-tiles", "max_tiles", tiles), ("--max-frames", "max_frames", frames)):
        for n in range(current - 1, 0, -1):  # the largest setting that fits
            count = loader.count(sizes, replace(overrides, **{field: n}))
            if count <= limit:
                fixes.append(f"{flag} {n} ({count:,} tokens)")
                break
    if fixes:
        return "use " + " or ".join(fixes)
    least = loader.count(sizes, replace(overrides, max_tiles=1, max_frames=1))
    if tiles and frames and least <= limit:
        return f"use --max-tiles 1 --max-frames 1 ({least:,} tokens)"
    return f"even one tile per image and one frame per video give {least:,}: pass fewer images or videos"


def _tiles(loader: VisualLoader, size: ItemSize, overrides: Overrides) -> int:
    """Tiles of the grid an image gets now (0 in the single layout: --max-tiles changes nothing)."""
    if loader.single:
        return 0
    rows, cols = select_grid(size.image_size, loader.model.encoder.image_size, **loader.tile_limits(overrides))
    return rows * cols
