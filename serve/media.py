"""Images and videos of a request: data: URLs decoded in memory, local paths only where allowed.

No remote URL is ever fetched. A local path is read only under ``--allowed-media-dir`` (after
resolving links, so ``..`` or a symlink cannot leave it). Images are decoded here, so a bad one
is named by its field; their pixel count is checked against ``vision.max_pixels`` before
decoding (videos: by the video loader).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.vision import ImageError, load_image

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
VIDEO_TYPES = ("video/mp4", "video/webm", "video/quicktime", "video/x-matroska")
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?:;[\w=.-]+)*;base64,(?P<data>.*)", re.DOTALL)


class MediaError(HybridError):
    """A media part that cannot be used; `param` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def image_source(url: str, param: str, allowed_dir: Path | None, max_pixels: int) -> Image.Image:
    """An image part's URL -> the decoded image (its size checked against `max_pixels` first)."""
    try:
        return load_image(_source(url, param, allowed_dir, IMAGE_TYPES), max_pixels=max_pixels)
    except ImageError as e:
        raise MediaError(f"{param}: {e}", param) from None


def video_source(url: str, param: str, allowed_dir: Path | None, scratch: Path) -> str:
    """A video part's URL -> a file path for `load_video` (a data: URL is written into `scratch`)."""
    source = _source(url, param, allowed_dir, VIDEO_TYPES)
    if isinstance(source, str):
        return source
    fd, path = tempfile.mkstemp(dir=scratch, suffix=".video")
    with os.fdopen(fd, "wb") as f:
        f.write(source)
    return path


def _source(url: str, param: str, allowed_dir: Path | None, types: tuple[str, ...]) -> bytes | str:
    if url.startswith("data:"):
        return _decode(url, param, types)
    if re.match(r"[a-z][a-z0-9+.-]*://", url, re.IGNORECASE) and not url.startswith("file://"):
        raise MediaError(f"{param}: remote URLs are never fetched; send the file as a data: URL "
                         f"(data:{types[0]};base64,...)", param)
    return _local(url.removeprefix("file://"), param, allowed_dir)


def _decode(url: str, param: str, types: tuple[str, ...]) -> bytes:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise MediaError(f"{param}: not a base64 data: URL (data:{types[0]};base64,...)", param)
    if match["type"] not in types:
        raise MediaError(f"{param}: media type {match['type']} is not taken here; use one of {', '.join(types)}", param)
    try:
        return base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{param}: the data: URL's base64 does not decode", param) from None


def _local(path: str, param: str, allowed_dir: Path | None) -> str:
    if allowed_dir is None:
        raise MediaError(f"{param}: local files are not served; send a data: URL, or start the server with "
                         "--allowed-media-dir DIR to allow files under DIR", param)
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(allowed_dir):
        raise MediaError(f"{param}: {path} is outside the allowed media folder {allowed_dir}", param)
    if not resolved.is_file():
        raise MediaError(f"{param}: {path}: no such file", param)
    return str(resolved)
