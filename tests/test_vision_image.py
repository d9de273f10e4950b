"""Image loading (safety, orientation, colour modes) and LLaVA-NeXT anyres tiling."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.vision import (
    CLIP_MEAN,
    CLIP_STD,
    AnyresTiles,
    ImageError,
    anyres_tiles,
    load_image,
    normalize,
    num_visual_tokens,
    select_grid,
    tiles_to_grid,
    to_tensor,
    unpad_features,
)

LLAVA_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _png_header_only(width, height):
    """A ~70-byte PNG whose header claims width x height RGB pixels (a decompression bomb's shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def _error(fn, *args, match, **kwargs):
    with pytest.raises(ImageError, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, HybridError) and "\n" not in str(info.value)
    error = info.value  # no chained exception to print under the user's one line
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return str(info.value)


# --- load_image ---------------------------------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "photo.jpg")
    assert image.mode == "RGB" and image.size == (20, 40)
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black -> white
    rgba.putpixel((2, 0), (255, 0, 0, 128))  # half-transparent red -> pink
    rgba.save(tmp_path / "alpha.png")
    image = load_image(str(tmp_path / "alpha.png"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((1, 0)) == (255, 255, 255)
    assert image.getpixel((2, 0))[0] == 255 and 120 <= image.getpixel((2, 0))[1] <= 135
    la = Image.new("LA", (2, 1), (0, 0))  # gray + alpha, fully transparent
    assert load_image(la).getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 255, 0, 10, 20, 30] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png", transparency=1)
    image = load_image(tmp_path / "palette.png")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (0, 255, 0) and image.getpixel((1, 0)) == (255, 255, 255)


def test_cmyk_and_16_bit_gray(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = load_image(tmp_path / "cmyk.jpg").getpixel((1, 1))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    gray16 = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    image = load_image(tmp_path / "gray16.png")  # Pillow's own convert would clip 32896 to white
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_bytes_and_pil_sources(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (5, 3), (1, 2, 3)).save(buffer, "PNG")
    assert load_image(buffer.getvalue()).getpixel((4, 2)) == (1, 2, 3)
    rgba = Image.new("RGBA", (2, 2), (9, 9, 9, 0))
    out = load_image(rgba)
    assert out.mode == "RGB" and rgba.mode == "RGBA" and out is not rgba  # the caller's image is untouched


def test_user_mistakes_are_one_line_errors(tmp_path):
    message = _error(load_image, tmp_path / "missing.png", match="no such file")
    assert "missing.png" in message
    _error(load_image, tmp_path, match="folder")
    (tmp_path / "notes.png").write_text("these are notes, not pixels\n")
    _error(load_image, tmp_path / "notes.png", match="not an image")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _error(load_image, tmp_path / "cut.png", match="truncated")


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    # 9000 x 9000 (81M pixels) with almost no data: decoding would fail as truncated,
    # so the max_pixels message proves the header was checked first.
    (tmp_path / "bomb.png").write_bytes(_png_header_only(9000, 9000))
    message = _error(load_image, tmp_path / "bomb.png", max_pixels=50_000_000, match="max_pixels")
    assert "9000x9000" in message and "50,000,000" in message
    # 20000 x 20000 is over Pillow's own hard limit: its DecompressionBombError becomes ours.
    _error(load_image, _png_header_only(20000, 20000), max_pixels=10**12, match="max_pixels")
    _error(load_image, Image.new("RGB", (1, 1)), max_pixels=0, match="1x1 = 1 pixels")


# --- tensors ------------------------------------------------------------------------------------

def test_to_tensor_and_normalize():
    image = Image.new("RGB", (10, 6), tuple(round(m * 255) for m in CLIP_MEAN))
    pixels = to_tensor(image)
    assert pixels.shape == (3, 6, 10) and pixels.dtype == torch.float32
    out = normalize(image, 8, CLIP_MEAN, CLIP_STD)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert out.abs().max() < 0.01  # the mean colour normalises to ~0
    white = normalize(Image.new("RGB", (3, 3), (255, 255, 255)), 4, CLIP_MEAN, CLIP_STD)
    torch.testing.assert_close(white[:, 0, 0], (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))


# --- anyres: grid choice ------------------------------------------------------------------------

def _llava_select_best_resolution(original_size, possible_resolutions):
    """LLaVA-NeXT's llava/mm_utils.py select_best_resolution, verbatim (floats and all)."""
    original_width, original_height = original_size
    best_fit, max_effective, min_wasted = None, 0, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted, best_fit = effective, wasted, (width, height)
    return best_fit


@pytest.mark.parametrize("size, grid", [
    ((1000, 500), (1, 2)),  # 2:1 fills 672x336 exactly
    ((500, 1000), (2, 1)),
    ((2000, 2000), (2, 2)),
    ((3000, 1000), (1, 3)),  # 3:1 fills 1008x336
    ((1000, 3000), (3, 1)),
    ((300, 300), (2, 1)),  # fits everywhere, least waste ties 336x672 / 672x336: the first listed wins
])
def test_select_grid_llava_pinpoints(size, grid):
    assert select_grid(size, 336, pinpoints=LLAVA_PINPOINTS) == grid


def test_select_grid_max_tiles():
    assert select_grid((2000, 2000), 336, max_tiles=4) == (2, 2)
    assert select_grid((2000, 2000), 336, max_tiles=1) == (1, 1)
    # 1000x200 fits at full resolution (200000 px) on 1x3, 1x4, 1x5, ...; 1x3 wastes least.
    assert select_grid((1000, 200), 336, max_tiles=6) == (1, 3)
    assert select_grid((200, 1000), 336, max_tiles=6) == (3, 1)


def test_select_grid_matches_llava_reference():
    grids = [(r, c) for r in range(1, 10) for c in range(1, 9 // r + 1)]
    for width in range(10, 4000, 151):
        for height in range(10, 4000, 163):
            rows, cols = select_grid((width, height), 336, pinpoints=LLAVA_PINPOINTS)
            assert (cols * 336, rows * 336) == _llava_select_best_resolution((width, height), LLAVA_PINPOINTS)
            rows, cols = select_grid((width, height), 336, max_tiles=9)
            expected = _llava_select_best_resolution((width, height), [(c * 336, r * 336) for r, c in grids])
            assert (cols * 336, rows * 336) == expected


def test_select_grid_settings_errors():
    _error(select_grid, (10, 10), 336, match="exactly one")
    _error(select_grid, (10, 10), 336, max_tiles=4, pinpoints=LLAVA_PINPOINTS, match="exactly one")
    _error(select_grid, (10, 10), 336, pinpoints=[[336, 600]], match=r"\[336, 600\].*multiple")
    _error(select_grid, (10, 10), 336, max_tiles=0, match="max_tiles=0")


# --- anyres: tiles, stitching, unpadding, token count -------------------------------------------

def _canvas(tiles: AnyresTiles) -> torch.Tensor:
    """Reassemble the tiles (without the thumbnail) into the (3, H, W) canvas."""
    rows, cols = tiles.grid
    per_tile = tiles.pixels[1:].permute(0, 2, 3, 1)  # (rows*cols, t, t, 3)
    return tiles_to_grid(per_tile, rows, cols).permute(2, 0, 1)


def test_anyres_tiles_layout_and_padding():
    image = Image.new("RGB", (90, 40), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 45, 40))  # left half black
    tiles = anyres_tiles(image, 32, (2, 3), mean=CLIP_MEAN, std=CLIP_STD)
    assert tiles.pixels.shape == (7, 3, 32, 32) and tiles.grid == (2, 3) and tiles.canvas_size == (64, 96)
    torch.testing.assert_close(tiles.pixels[0], normalize(image, 32, CLIP_MEAN, CLIP_STD))
    top, left, height, width = tiles.content
    assert (top, left, height, width) == (10, 0, 43, 96)  # 90x40 -> 96x43 (ceil), centred vertically
    canvas = _canvas(tiles)
    inside = torch.zeros(64, 96, dtype=torch.bool)
    inside[top:top + height, left:left + width] = True
    assert (canvas[:, ~inside] == 0).all()  # padding is the mean colour, exactly 0 once normalised
    assert canvas[0, top + 20, 10] < -1 and canvas[0, top + 20, 90] > 1  # black left, white right


@pytest.mark.parametrize("size", [(1, 1000), (1000, 1)])
def test_extreme_aspect_ratios(size):
    image = Image.new("RGB", size, (255, 255, 255))
    grid = select_grid(size, 32, max_tiles=4)
    tiles = anyres_tiles(image, 32, grid, mean=CLIP_MEAN, std=CLIP_STD)
    rows, cols = tiles.grid
    top, left, height, width = tiles.content
    assert min(height, width) >= 1 and max(height, width) == max(tiles.canvas_size)
    features = torch.randn(rows * cols, 4, 4, 5)
    unpadded = unpad_features(tiles_to_grid(features, rows, cols), tiles.content, tiles.canvas_size)
    thin = unpadded.shape[1] if size[0] == 1 else unpadded.shape[0]
    assert thin == 1  # the one-pixel line keeps one row/column of features, not zero
    tokens = num_visual_tokens(size, 32, 4, max_tiles=4, newline=True)
    assert tokens == 16 + unpadded.shape[0] * unpadded.shape[1] + unpadded.shape[0]


def test_tiles_to_grid_is_row_major():
    rows, cols, gh, gw = 2, 3, 2, 4
    tile = torch.arange(rows * cols).view(-1, 1, 1, 1).expand(-1, gh, gw, 1)
    y = torch.arange(gh).view(1, -1, 1, 1).expand(rows * cols, -1, gw, 1)
    x = torch.arange(gw).view(1, 1, -1, 1).expand(rows * cols, gh, -1, 1)
    grid = tiles_to_grid(torch.cat([tile, y, x], dim=-1).contiguous(), rows, cols)
    assert grid.shape == (rows * gh, cols * gw, 3)
    for r in range(rows * gh):
        for c in range(cols * gw):
            assert grid[r, c].tolist() == [(r // gh) * cols + c // gw, r % gh, c % gw]
    with pytest.raises(ValueError, match="thumbnail"):
        tiles_to_grid(torch.zeros(7, gh, gw, 1), rows, cols)


SIZES = [1, 3, 31, 32, 33, 47, 64, 100, 257, 1000]
SETTINGS = [dict(max_tiles=1), dict(max_tiles=4), dict(max_tiles=6),
            dict(pinpoints=[[p[0] // 336 * 32, p[1] // 336 * 32] for p in LLAVA_PINPOINTS])]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: str(s)[:20])
def test_token_count_matches_actual_shapes(settings):
    tile, patch = 32, 8  # a 4x4 patch grid per tile
    for width in SIZES:
        for height in SIZES:
            grid = select_grid((width, height), tile, **settings)
            tiles = anyres_tiles(Image.new("RGB", (width, height)), tile, grid, mean=CLIP_MEAN, std=CLIP_STD)
            rows, cols = grid
            # Features that saw any image pixel must be exactly the ones unpad_features keeps.
            mask = torch.zeros(tiles.canvas_size)
            top, left, h, w = tiles.content
            mask[top:top + h, left:left + w] = 1
            touched = mask.view(rows * 4, patch, cols * 4, patch).amax(dim=(1, 3))
            kept = unpad_features(touched[..., None], tiles.content, tiles.canvas_size)[..., 0]
            assert kept.numel() == touched.sum() and (kept == 1).all(), (width, height, settings)
            features = torch.zeros(rows * cols, 4, 4, 2)
            unpadded = unpad_features(tiles_to_grid(features, rows, cols), tiles.content, tiles.canvas_size)
            for newline in (True, False):
                expected = 16 + unpadded.shape[0] * unpadded.shape[1] + (unpadded.shape[0] if newline else 0)
                assert num_visual_tokens((width, height), tile, (4, 4), **settings, newline=newline) == expected


def test_token_count_llava_next_336():
    # LLaVA-NeXT-7B: 336 px tiles, 24x24 patches; a 672x336 canvas holding a 2:1 image has no padding.
    assert num_visual_tokens((1000, 500), 336, 24, pinpoints=LLAVA_PINPOINTS, newline=True) == 576 + 24 * 48 + 24
    for size in [(1000, 500), (640, 480), (1, 1000), (1000, 1)]:
        grid = select_grid(size, 336, pinpoints=LLAVA_PINPOINTS)
        tiles = anyres_tiles(Image.new("RGB", size), 336, grid, mean=CLIP_MEAN, std=CLIP_STD)
        features = torch.zeros(grid[0] * grid[1], 24, 24, 1)
        unpadded = unpad_features(tiles_to_grid(features, *grid), tiles.content, tiles.canvas_size)
        assert num_visual_tokens(size, 336, 24, pinpoints=LLAVA_PINPOINTS, newline=False) == \
            576 + unpadded.shape[0] * unpadded.shape[1]


def _hf_unpad_rows_cols(image_size, grid_shape):
    """transformers' LLaVA-NeXT `unpad_image` arithmetic, floats and all, as a reference."""
    width, height = image_size
    rows, cols = grid_shape
    if width / height > cols / rows:
        new = int(round(height * (cols / width), 7))
        pad = (rows - new) // 2
        return (pad, rows - pad), (0, cols)
    new = int(round(width * (rows / height), 7))
    pad = (cols - new) // 2
    return (0, rows), (pad, cols - pad)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: str(s)[:20])
def test_llava_unpad_rule_matches_transformers_arithmetic_and_the_token_count(settings):
    tile = 32
    for width in SIZES:
        for height in SIZES:
            grid = select_grid((width, height), tile, **settings)
            tiles = anyres_tiles(Image.new("RGB", (width, height)), tile, grid, mean=CLIP_MEAN, std=CLIP_STD,
                                 unpad="llava")
            rows, cols = grid
            index = torch.stack(torch.meshgrid(torch.arange(rows * 4), torch.arange(cols * 4), indexing="ij"), -1)
            kept = unpad_features(index, tiles.content, tiles.canvas_size, rule="llava", image_size=(width, height))
            (r0, r1), (c0, c1) = _hf_unpad_rows_cols((width, height), (rows * 4, cols * 4))
            if r1 > r0 and c1 > c0:  # where transformers keeps something, we keep exactly that
                assert kept[0, 0].tolist() == [r0, c0] and kept.shape[:2] == (r1 - r0, c1 - c0), (width, height)
            else:  # a hair-thin image: transformers keeps nothing, we keep the middle feature line
                assert min(kept.shape[:2]) == 1, (width, height)
            expected = 16 + kept.shape[0] * kept.shape[1] + kept.shape[0]
            assert num_visual_tokens((width, height), tile, 4, **settings, newline=True, unpad="llava") == expected


def test_unknown_unpad_rule_is_refused():
    with pytest.raises(ImageError, match="unpad rule 'crop': use one of touched, llava"):
        unpad_features(torch.zeros(4, 4, 1), (0, 0, 32, 32), (32, 32), rule="crop")
