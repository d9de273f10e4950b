"""LLaVA-NeXT "anyres": an image of any size as a thumbnail plus a grid of encoder tiles.

The flow, for an encoder that sees `tile` x `tile` pixels as a gh x gw patch grid:

1. `select_grid` picks the grid (rows, cols) whose canvas (rows*tile x cols*tile pixels)
   shows the image at the highest resolution, wasting the least canvas.
2. `anyres_tiles` resizes the image (aspect ratio kept) to fit that canvas, centres it,
   pads the rest with the mean colour (0 after normalisation), and cuts the canvas into
   tiles; tile 0 is the whole image squashed to one tile (the thumbnail).
3. The encoder turns the rows*cols tiles into features (rows*cols, gh, gw, d);
   `tiles_to_grid` stitches them into one (rows*gh, cols*gw, d) map and `unpad_features`
   drops the padding's feature rows/columns, by one of two rules: ``touched`` keeps every
   feature that saw any image pixel; ``llava`` is LLaVA-NeXT's ``unpad_image`` (the image's
   height or width scaled to the grid, rounded down, the rest cut symmetrically), which can
   drop a partly covered row at each edge: use it for checkpoints trained that way.
4. `num_visual_tokens` gives the resulting token count from the image size alone, with
   the same arithmetic, so a caller can check the context length before encoding.

`single_view` is LLaVA-1.5's layout instead: the thumbnail alone, no tiles (grid (0, 0)).

All the box arithmetic is in exact integers: LLaVA-NeXT's rules, without the float
round-off that can make its `ceil(h * scale)` one pixel too big.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor

from .image import ImageError, normalize, normalize_tensor, to_tensor

UNPAD_RULES = ("touched", "llava")
Grid = tuple[int, int]  # (rows, cols) of tiles
Box = tuple[int, int, int, int]  # (top, left, height, width) in canvas pixels


@dataclass(frozen=True)
class AnyresTiles:
    """An image ready for the encoder.

    pixels:  (1 + rows*cols, 3, tile, tile) float32, normalised; [0] is the thumbnail,
             then the tiles of the canvas in row-major order ((rows*cols, ...) without
             the thumbnail: `thumbnail` False).
    grid:    (rows, cols); (0, 0) for `single_view`, whose pixels are the thumbnail only.
    content: (top, left, height, width) of the image on the padded canvas; the rest is padding.
    image_size: (width, height) of the image before resizing.
    unpad:   the rule that drops padding features (`UNPAD_RULES`, see `unpad_features`).
    """

    pixels: Tensor
    grid: Grid
    content: Box
    image_size: tuple[int, int] = (0, 0)
    unpad: str = "touched"
    thumbnail: bool = True

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(height, width) of the padded canvas in pixels: (rows*tile, cols*tile)."""
        tile = self.pixels.shape[-1]
        return self.grid[0] * tile, self.grid[1] * tile


def select_grid(image_size: Sequence[int], tile_size: int, *, max_tiles: int | None = None,
                pinpoints: Sequence[Sequence[int]] | None = None) -> Grid:
    """LLaVA-NeXT's `select_best_resolution`: the (rows, cols) grid for an image.

    image_size: (width, height) in pixels. Candidates are the `pinpoints`, each a
    (width, height) canvas in pixels that is a multiple of `tile_size` (LLaVA-NeXT's
    `image_grid_pinpoints` order), or every grid with rows*cols <= `max_tiles` (rows,
    then cols, ascending). Give exactly one of the two. The winner maximises the effective
    resolution, min(image pixels, pixels after downscaling the image to fit the canvas),
    then wastes the least canvas area; a full tie keeps the earlier candidate.
    """
    width, height = _size(image_size)
    best, best_key = None, None
    for rows, cols in _candidates(tile_size, max_tiles, pinpoints):
        canvas_w, canvas_h = cols * tile_size, rows * tile_size
        if canvas_w * height <= canvas_h * width:  # width-bound: scale = canvas_w / width
            fit_w, fit_h = canvas_w, height * canvas_w // width
        else:
            fit_w, fit_h = width * canvas_h // height, canvas_h
        effective = min(fit_w * fit_h, width * height)
        key = (effective, -(canvas_w * canvas_h - effective))
        if best_key is None or key > best_key:
            best, best_key = (rows, cols), key
    return best


def anyres_tiles(image: Image.Image, tile_size: int, grid: Grid, *, mean: Sequence[float],
                 std: Sequence[float], unpad: str = "touched", thumbnail: bool = True) -> AnyresTiles:
    """Thumbnail (unless `thumbnail` is False) + tiles of an RGB image on a `grid` (from
    `select_grid`); see `AnyresTiles`."""
    rows, cols = grid
    top, left, height, width = content = _fit(image.size, (cols * tile_size, rows * tile_size))
    canvas = torch.zeros(3, rows * tile_size, cols * tile_size)  # the mean colour, normalised
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    canvas[:, top:top + height, left:left + width] = normalize_tensor(to_tensor(resized), mean, std)
    tiles = (canvas.view(3, rows, tile_size, cols, tile_size)
             .permute(1, 3, 0, 2, 4)
             .reshape(rows * cols, 3, tile_size, tile_size))
    if thumbnail:
        tiles = torch.cat([normalize(image, tile_size, mean, std)[None], tiles])
    return AnyresTiles(pixels=tiles, grid=(rows, cols), content=content, image_size=image.size, unpad=unpad,
                       thumbnail=thumbnail)


def single_view(image: Image.Image, tile_size: int, *, mean: Sequence[float], std: Sequence[float]) -> AnyresTiles:
    """LLaVA-1.5's layout: the whole image as one tile (the thumbnail), no grid -> pixels (1, 3, tile, tile)."""
    return AnyresTiles(pixels=normalize(image, tile_size, mean, std)[None], grid=(0, 0), content=(0, 0, 0, 0),
                       image_size=image.size)


def tiles_to_grid(tile_features: Tensor, rows: int, cols: int) -> Tensor:
    """Per-tile features (rows*cols, gh, gw, d), row-major -> one map (rows*gh, cols*gw, d)."""
    n, gh, gw, d = tile_features.shape
    if n != rows * cols:
        raise ValueError(f"tiles_to_grid: got {n} tiles for a {rows}x{cols} grid; pass the tiles "
                         "without the thumbnail")
    return tile_features.view(rows, cols, gh, gw, d).permute(0, 2, 1, 3, 4).reshape(rows * gh, cols * gw, d)


def unpad_features(grid_features: Tensor, content: Box, canvas_size: tuple[int, int], *, rule: str = "touched",
                   image_size: Sequence[int] | None = None) -> Tensor:
    """Drop the feature rows/columns of the padding.

    grid_features: (H, W, d) over a canvas of `canvas_size` = (height, width) pixels;
    content: (top, left, height, width) of the image on that canvas (`AnyresTiles.content`).
    rule ``touched``: a feature row/column is kept if it covers any image pixel. Rule
    ``llava``: LLaVA-NeXT's cut from the original `image_size` (width, height). Returns (H', W', d).
    """
    rows, cols = _span(content, canvas_size, grid_features.shape[:2], rule, image_size)
    return grid_features[rows[0]:rows[1], cols[0]:cols[1]]


def num_visual_tokens(image_size: Sequence[int], tile_size: int, patch_grid: int | Sequence[int], *,
                      max_tiles: int | None = None, pinpoints: Sequence[Sequence[int]] | None = None,
                      newline: bool, unpad: str = "touched", thumbnail: bool = True) -> int:
    """Tokens an image of `image_size` (width, height) becomes.

    patch_grid: features per tile side, an int or (gh, gw) (after the connector, if it
    pools). Thumbnail gh*gw (if `thumbnail`) + unpadded grid H'*W' + H' row-end newlines
    if `newline`.
    """
    gh, gw = (patch_grid, patch_grid) if isinstance(patch_grid, int) else patch_grid
    rows, cols = select_grid(image_size, tile_size, max_tiles=max_tiles, pinpoints=pinpoints)
    canvas = (rows * tile_size, cols * tile_size)
    content = _fit(_size(image_size), (canvas[1], canvas[0]))
    (r0, r1), (c0, c1) = _span(content, canvas, (rows * gh, cols * gw), unpad, _size(image_size))
    height, width = r1 - r0, c1 - c0
    return (gh * gw if thumbnail else 0) + height * width + (height if newline else 0)


def _fit(image_size: tuple[int, int], canvas_size: tuple[int, int]) -> Box:
    """LLaVA-NeXT's `resize_and_pad_image` box: the image resized, aspect ratio kept, to
    fit a (width, height) canvas, centred. Returns (top, left, height, width)."""
    width, height = image_size
    canvas_w, canvas_h = canvas_size
    if canvas_w * height < canvas_h * width:  # width-bound
        new_w, new_h = canvas_w, min(-(-height * canvas_w // width), canvas_h)
    else:
        new_w, new_h = min(-(-width * canvas_h // height), canvas_w), canvas_h
    return (canvas_h - new_h) // 2, (canvas_w - new_w) // 2, new_h, new_w


def _span(content: Box, canvas_size: tuple[int, int], grid_shape: Sequence[int], rule: str,
          image_size: Sequence[int] | None):
    """The feature rows [r0, r1) and columns [c0, c1) that `rule` keeps."""
    if rule == "touched":
        return _content_span(content, canvas_size, grid_shape)
    if rule != "llava":
        raise ImageError(f"unpad rule {rule!r}: use one of {', '.join(UNPAD_RULES)}")
    if image_size is None:
        raise ImageError("the llava unpad rule needs the original image size")
    return _llava_span(image_size, grid_shape)


def _llava_span(image_size: Sequence[int], grid_shape: Sequence[int]):
    """LLaVA-NeXT's ``unpad_image`` in exact integers: the image's other side scaled to the
    grid and rounded down, the remaining features cut symmetrically (an odd remainder keeps
    one more). Its float ``int(round(x, 7))`` is this floor for any sizes below 10^6. Where
    its cut would leave nothing (a hair-thin image), the middle feature is kept.
    """
    width, height = image_size
    rows, cols = grid_shape
    spans = [(0, rows), (0, cols)]
    if width * rows > cols * height:  # relatively wider than the grid: rows are cut
        axis, n, kept = 0, rows, cols * height // width
    else:
        axis, n, kept = 1, cols, rows * width // height
    pad = (n - kept) // 2
    spans[axis] = (pad, n - pad) if n - 2 * pad > 0 else (n // 2, n // 2 + 1)
    return spans


def _content_span(content: Box, canvas_size: tuple[int, int], grid_shape: Sequence[int]):
    """The feature rows [r0, r1) and columns [c0, c1) that touch the content box.

    Feature i of n covers canvas pixels [i*P/n, (i+1)*P/n): floor at the start and ceil at
    the end so a feature that is only partly image is kept.
    """
    top, left, height, width = content
    spans = []
    for start, length, pixels, n in ((top, height, canvas_size[0], grid_shape[0]),
                                     (left, width, canvas_size[1], grid_shape[1])):
        spans.append((start * n // pixels, -(-(start + length) * n // pixels)))
    return spans


def _candidates(tile_size: int, max_tiles: int | None, pinpoints) -> list[Grid]:
    if (max_tiles is None) == (pinpoints is None):
        raise ImageError("anyres: give exactly one of max_tiles and pinpoints")
    if max_tiles is not None:
        if max_tiles < 1:
            raise ImageError(f"anyres: max_tiles={max_tiles}; it must be at least 1")
        return [(r, c) for r in range(1, max_tiles + 1) for c in range(1, max_tiles // r + 1)]
    if not pinpoints:
        raise ImageError("anyres: pinpoints is empty; give at least one [width, height]")
    grids = []
    for point in pinpoints:
        w, h = point
        if w <= 0 or h <= 0 or w % tile_size or h % tile_size:
            raise ImageError(f"anyres: pinpoint [{w}, {h}] is not a positive multiple of the tile size "
                             f"{tile_size}; use sizes like [{tile_size}, {2 * tile_size}]")
        grids.append((h // tile_size, w // tile_size))
    return grids


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive (width, height), got {tuple(image_size)}")
    return int(width), int(height)
