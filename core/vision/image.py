"""Loading images safely and turning them into normalised tensors for a ViT.

`load_image` is the one door images come in by: it reads the header first and refuses
images with too many pixels before any pixel data is decoded (a small PNG or JPEG can
claim 50000 x 50000 pixels and take gigabytes to decode), applies the EXIF orientation a
camera wrote, and returns an RGB image whatever the file held (palette, alpha, CMYK,
16-bit grayscale). Every user mistake becomes an `ImageError` with one line that names
the file, what is wrong and how to fix it.
"""

from __future__ import annotations

import io
import os
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..errors import HybridError

# Matches the `vision.max_pixels` default of the config: a 4K image is 8.3M pixels, an 8K
# one 33M; above this we refuse unless the caller raises the limit.
DEFAULT_MAX_PIXELS = 100_000_000

# Per-channel pixel statistics (RGB, on [0, 1]) that the common encoder families were trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

ImageSource = Union[str, "os.PathLike[str]", bytes, Image.Image]

_WHITE = (255, 255, 255)


class ImageError(HybridError):
    """An image cannot be loaded or preprocessed as asked."""


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load `source` (a path, encoded bytes or a PIL image) as an upright RGB image.

    The pixel count (width * height) is checked against `max_pixels` from the header,
    before decoding. A PIL image passed in is not modified; a new image is returned.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        return _finish(source, name, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        opened = io.BytesIO(bytes(source))
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageError(f"{name}: no such file; check the path")
        if os.path.isdir(path):
            raise ImageError(f"{name}: is a folder, not an image file; pass the path of one image")
        opened = path
    try:
        image = Image.open(opened)  # reads the header only; pixels are decoded by load()
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image, or a format Pillow cannot read; "
                         "convert it to PNG or JPEG") from None
    except Image.DecompressionBombError as e:
        raise _bomb_error(name, max_pixels, e) from None
    except OSError as e:
        raise ImageError(f"{name}: cannot be read ({e}); check that the file is readable") from None
    with image:
        return _finish(image, name, max_pixels)


def to_tensor(image: Image.Image) -> Tensor:
    """An RGB PIL image -> float32 tensor (3, H, W) with values in [0, 1]."""
    array = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy for torch
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def normalize_tensor(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(pixels - mean) / std per channel; `pixels` (3, H, W) on [0, 1] -> (3, H, W)."""
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(3, 1, 1)
    return (pixels - mean_t) / std_t


def normalize(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Resize `image` to size x size (bicubic, aspect ratio not kept, as LLaVA-NeXT's
    thumbnail does) and normalise it -> float32 tensor (3, size, size)."""
    return normalize_tensor(to_tensor(image.resize((size, size), Image.Resampling.BICUBIC)), mean, std)


def _finish(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Size check (header only), decode, orient, convert to RGB."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {width * height:,} pixels is more than the limit of "
                         f"{max_pixels:,}; raise max_pixels if you trust this image")
    try:
        image.load()
    except Image.DecompressionBombError as e:  # some formats only learn their size while loading
        raise _bomb_error(name, max_pixels, e) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated or corrupt data as any of these depending on the format.
        raise ImageError(f"{name}: cannot decode the image data ({e}); the file is truncated or corrupt, "
                         "re-download or re-export it") from None
    try:
        return _to_rgb(ImageOps.exif_transpose(image))
    except ValueError as e:  # a colour mode Pillow cannot convert (e.g. LAB)
        raise ImageError(f"{name}: cannot convert {image.mode} pixels to RGB ({e}); re-export it as RGB") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent pixels are composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_gray_to_rgb(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_gray_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit int / float) grayscale -> 8-bit RGB.

    Pillow's own conversion clips every value above 255 to white, so a 16-bit scan would
    come out almost all white; we rescale 16-bit data to 8 bits instead. Modes "I" and
    "F" do not say their range: values above 255 are taken as 16-bit, others as 8-bit.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or values.max(initial=0.0) > 255.0:
        values = values / 257.0  # 65535 -> 255
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _bomb_error(name: str, max_pixels: int, error: Exception) -> ImageError:
    return ImageError(f"{name}: too many pixels to decode safely (Pillow: {error}); our limit is "
                      f"max_pixels={max_pixels:,}: raise it and PIL.Image.MAX_IMAGE_PIXELS if you trust this image")


def _describe(source: object) -> str:
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<PIL image>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of image data>"
    return str(os.fspath(source))
