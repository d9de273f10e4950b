"""Pixels of the digits data set: 8x8 digits upscaled to dark ink on white paper, laid out as
document pages of 16 px cells or as 32 px video frames, written as 8-bit grayscale PNGs with
the standard library's zlib (no Pillow or codec needed to generate)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

DIGIT_PX = 12  # a digit after upscaling from 8x8
CELL_PX = 16  # a digit's cell in a document: 2 px of paper around it
TILE_PX = 32  # the encoder tile: 2x2 cells, one video frame
PAPER = 255


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bilinear resampling with half-pixel centres (as Pillow, torch)."""
    x = ((np.arange(n_out) + 0.5) * n_in / n_out - 0.5).clip(0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lo), 1 - (x - lo))
    np.add.at(weights, (np.arange(n_out), hi), x - lo)
    return weights


def digit_ink(images: np.ndarray) -> np.ndarray:
    """(n, 8, 8) intensities 0..16 -> (n, 12, 12) uint8, dark ink (0) on white paper (255)."""
    w = bilinear_matrix(images.shape[-1], DIGIT_PX)
    # einsum without `optimize` runs numpy's own loops, not BLAS: same bits on every machine.
    up = np.einsum("ij,njk,lk->nil", w, images, w)
    return (PAPER - np.rint(up * (255 / 16))).clip(0, 255).astype(np.uint8)


def render_page(ink: np.ndarray) -> np.ndarray:
    """(rows, cols, 12, 12) digit ink -> a page of whole 32 px tiles: the grid at the top left,
    blank paper to the right and below. Its size is then exactly an anyres canvas, so the image
    is never rescaled at its training size and every 16 px cell is one encoder patch (anyres
    resizes an image to fill its canvas, which would move the digits off the patch grid)."""
    grid = render_grid(ink)
    pad = [(0, -n % TILE_PX) for n in grid.shape]
    return np.pad(grid, pad, constant_values=PAPER)


def render_grid(ink: np.ndarray) -> np.ndarray:
    """(rows, cols, 12, 12) digit ink -> a (rows*16, cols*16) grid, each digit centred in its cell."""
    rows, cols = ink.shape[:2]
    margin = (CELL_PX - DIGIT_PX) // 2
    cells = np.full((rows, cols, CELL_PX, CELL_PX), PAPER, np.uint8)
    cells[:, :, margin:margin + DIGIT_PX, margin:margin + DIGIT_PX] = ink
    return cells.transpose(0, 2, 1, 3).reshape(rows * CELL_PX, cols * CELL_PX)  # (rows, 16, cols, 16)


def render_frame(ink: np.ndarray) -> np.ndarray:
    """(12, 12) digit ink -> a (32, 32) frame: one cell in the middle of a tile."""
    return np.pad(render_grid(ink[None, None]), (TILE_PX - CELL_PX) // 2, constant_values=PAPER)


def png(pixels: np.ndarray) -> bytes:
    """An (H, W) uint8 array as an 8-bit grayscale PNG (no filter; zlib level 6: level 9 is ~20x slower
    on these pages for 2 % smaller files)."""
    height, width = pixels.shape
    rows = np.hstack([np.zeros((height, 1), np.uint8), pixels])  # filter type 0 before each row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grayscale, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))
