"""Sampling frames from a video file, a folder of frame images or a list of image paths.

Video files are decoded with PyAV rather than imageio-ffmpeg: PyAV runs FFmpeg's
libraries in-process (no subprocess, no piping raw frames through a pipe), exposes each
stream's time base so frame times are exact fractions rather than guesses from a frame
rate, can seek to a keyframe so sampling 8 frames from an hour-long video does not decode
the hour, and ships FFmpeg inside its wheels (`pip install av`, nothing else to install).

Sampling, over a clip of duration D (frame k covers [t_k, t_{k+1})):
- `max_frames=K` only: the frames under the centres of K equal segments of the clip,
  (i + 0.5) * D / K, as LLaVA-Video samples;
- `fps=r`: the frames under 0, 1/r, 2/r, ... < D; if more than `max_frames`, a uniform
  subset of those times (centres of equal segments again);
- both None: every frame.
A frame under several sample times is returned once, so never more frames than exist.
Frames are selected by timestamp while streaming: only the selected ones are converted
and kept, and long gaps between sample times are skipped by seeking.
"""

from __future__ import annotations

import math
import os
import re
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence, Union

from PIL import Image
from torch import Tensor

from ..errors import HybridError
from .image import DEFAULT_MAX_PIXELS, ImageError, load_image

VideoSource = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]

# Seek instead of decoding forward when the next sample time is this far ahead: seeking
# costs up to one GOP (typically 0.5-10 s) of decoding, so shorter gaps are cheaper decoded.
_SEEK_GAP_S = Fraction(2)

_INSTALL_HINT = 'pip install av (or pip install "hybrid-mllm[vision]")'


class VideoError(HybridError):
    """A video (file, folder of frames or list of frames) cannot be loaded as asked."""


@dataclass
class VideoClip:
    """Frames of one video, normalised for the encoder: pixels (T, 3, S, S)."""

    pixels: Tensor


@dataclass
class VideoFrames:
    """Sampled frames, in time order.

    frames:     RGB PIL images, all the same size.
    timestamps: seconds from the start of the clip, one per frame.
    source_fps: the source's (average) frame rate, None if the container does not say.
    duration:   the clip's length in seconds, None if unknown.
    """

    frames: list[Image.Image]
    timestamps: list[float]
    source_fps: float | None
    duration: float | None


def load_video(source: VideoSource, *, max_frames: int | None = 8, fps: float | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, sequence_fps: float = 1.0) -> VideoFrames:
    """Sample frames from `source`: a video file, a folder of frame images (natural order:
    frame2 before frame10) or a list of image paths (in the given order).

    max_frames / fps: see the module docstring. max_pixels: refuse frames larger than this
    (width * height). sequence_fps: the frame rate of a folder/list of frames (they carry no
    timing; frames extracted for training are often 1 fps); ignored for video files. Only
    the sampled frames of a folder/list are read, and they must all have the same size.
    """
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"max_frames={max_frames}; it must be at least 1, or None for no cap")
    if fps is not None and not fps > 0:
        raise VideoError(f"fps={fps}; it must be positive, or None to sample by max_frames")
    if isinstance(source, (list, tuple)):
        if not source:
            raise VideoError("empty list of frame images; pass at least one image path")
        return _load_sequence("the frame list", list(source), max_frames, fps, max_pixels, sequence_fps)
    path = os.fspath(source)
    if os.path.isdir(path):
        return _load_sequence(path, _frame_files(path), max_frames, fps, max_pixels, sequence_fps)
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file or folder; check the path")
    return _load_file(path, max_frames, fps, max_pixels)


def sample_times(duration: Fraction, max_frames: int | None, fps: float | None) -> list[Fraction] | None:
    """Sample times in [0, duration) seconds, ascending; None means every frame."""
    if fps is None:
        if max_frames is None:
            return None
        return [(2 * i + 1) * duration / (2 * max_frames) for i in range(max_frames)]
    step = 1 / Fraction(fps).limit_denominator(1_000_000)
    times = [j * step for j in range(max(1, math.ceil(duration / step)))]
    if max_frames is not None and len(times) > max_frames:
        times = [times[(2 * i + 1) * len(times) // (2 * max_frames)] for i in range(max_frames)]
    return times


def sequence_indices(n_frames: int, rate: Fraction, max_frames: int | None, fps: float | None) -> list[int]:
    """The frames to read of a sequence of `n_frames` at `rate` frames per second, sampled as
    `sample_times` says: ascending, each once, all in [0, n_frames)."""
    times = sample_times(n_frames / rate, max_frames, fps)
    if times is None:
        return list(range(n_frames))
    return _unique(min(int(t * rate), n_frames - 1) for t in times)


# --- folders and lists of frame images -------------------------------------------------------------

def _frame_files(folder: str) -> list[str]:
    extensions = set(Image.registered_extensions())
    names = [n for n in os.listdir(folder)
             if not n.startswith(".") and os.path.splitext(n)[1].lower() in extensions
             and os.path.isfile(os.path.join(folder, n))]
    if not names:
        raise VideoError(f"{folder}: no image files (.jpg, .png, ...) in this folder; "
                         "put the frames there or pass a video file")
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def _natural_key(name: str) -> tuple:
    """'frame10.png' -> ('frame', 10, '.png'): digit runs compare as numbers."""
    return tuple(int(part) if part.isdecimal() else part.casefold() for part in re.split(r"(\d+)", name))


def _load_sequence(name: str, paths: list, max_frames, fps, max_pixels, sequence_fps) -> VideoFrames:
    rate = Fraction(sequence_fps).limit_denominator(1_000_000)
    if not rate > 0:
        raise VideoError(f"sequence_fps={sequence_fps}; it must be positive")
    frames, timestamps = [], []
    for i in sequence_indices(len(paths), rate, max_frames, fps):
        try:
            frame = load_image(paths[i], max_pixels=max_pixels)
        except ImageError as e:
            raise VideoError(f"{name}: frame {e}") from None
        if frames and frame.size != frames[0].size:
            raise VideoError(f"{name}: frame {os.fspath(paths[i])} is {frame.width}x{frame.height} but the first "
                             f"sampled frame is {frames[0].width}x{frames[0].height}; all frames must be the same "
                             "size, resize them first")
        frames.append(frame)
        timestamps.append(float(i / rate))
    return VideoFrames(frames, timestamps, source_fps=float(rate), duration=float(len(paths) / rate))


def _unique(values) -> list[int]:
    return list(dict.fromkeys(values))


# --- video files ---------------------------------------------------------------------------------

def _import_av():
    try:
        import av
    except ImportError:
        raise VideoError(f"reading video files needs PyAV: {_INSTALL_HINT}") from None
    return av


def _load_file(path: str, max_frames, fps, max_pixels) -> VideoFrames:
    av = _import_av()
    with _open(av, path) as container:
        stream = _video_stream(container, path, max_pixels)
        rate = stream.average_rate or stream.guessed_rate
        start, duration = _extent(container, stream)
        if duration is None:  # raw streams: the headers do not say; read the packets' times
            start, duration = _extent_by_demux(container, stream, rate)
        if duration is None and (max_frames is not None or fps is not None):
            raise VideoError(f"{path}: has no timestamps nor frame rate, so frames cannot be sampled by time; "
                             "remux it (e.g. ffmpeg -i in.h264 -c copy out.mp4) or pass max_frames=None, fps=None")
    with _open(av, path) as container:  # reopened: not every input can seek back to its start
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decode with FFmpeg's threads
        times = None if duration is None else sample_times(duration, max_frames, fps)
        targets = None if times is None else deque(start + t for t in times)
        try:
            picked = _decode(container, stream, targets, rate)
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed ({e}); the file is corrupt or cut short, "
                             "re-encode it (e.g. ffmpeg -i in.mp4 out.mp4)") from None
    if not picked:
        raise VideoError(f"{path}: no decodable frames (the video stream is empty or broken); "
                         "re-encode or replace the file")
    return VideoFrames(frames=[image for _, image in picked], timestamps=[float(t - start) for t, _ in picked],
                       source_fps=float(rate) if rate else None,
                       duration=None if duration is None else float(duration))


def _video_stream(container, path: str, max_pixels: int):
    if not container.streams.video:
        raise VideoError(f"{path}: has no video stream (audio only, or not a video); pass a video file")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for this codec
        raise VideoError(f"{path}: its video codec is not one FFmpeg can decode; re-encode it to H.264 "
                         "(ffmpeg -i IN -c:v libx264 OUT.mp4)")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > max_pixels:
        raise VideoError(f"{path}: frames of {width}x{height} = {width * height:,} pixels are more than the "
                         f"limit of {max_pixels:,}; raise max_pixels if you trust this video")
    return stream


def _open(av, path: str):
    try:
        return av.open(path)
    except av.error.InvalidDataError:
        raise VideoError(f"{path}: not a video FFmpeg can read (unsupported container or corrupt file); "
                         "convert it to MP4 (H.264) or WebM") from None
    except (av.error.FFmpegError, OSError) as e:  # EOF on an empty file, I/O errors on cut-off ones
        raise VideoError(f"{path}: cannot be read as a video ({e}); check the file or re-encode it") from None


def _extent(container, stream) -> tuple[Fraction, Fraction | None]:
    """(start, duration) in seconds from the headers; duration None when they do not say."""
    start = Fraction(stream.start_time) * stream.time_base if stream.start_time is not None else Fraction(0)
    if stream.duration:
        return start, Fraction(stream.duration) * stream.time_base
    if container.duration:  # microseconds (WebM/Matroska keep it here, not per stream)
        return start, Fraction(container.duration, 1_000_000)
    return start, None


def _extent_by_demux(container, stream, rate) -> tuple[Fraction, Fraction | None]:
    """(start, duration) from the packets, for inputs whose headers lack it (raw streams).
    Reads the compressed packets only, no decoding; untimed packets count 1/rate each."""
    first = end = None
    count = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the empty packet that marks the end
            continue
        count += 1
        if packet.pts is None:
            continue
        t = Fraction(packet.pts) * stream.time_base
        length = Fraction(packet.duration) * stream.time_base if packet.duration else (1 / rate if rate else 0)
        first = t if first is None else min(first, t)
        end = t + length if end is None else max(end, t + length)
    if first is not None:
        return first, end - first
    return Fraction(0), (count / Fraction(rate) if count and rate else None)


def _decode(container, stream, targets: deque | None, rate) -> list[tuple[Fraction, Image.Image]]:
    """Decode `stream`, keeping the frame under each target time (absolute seconds, ascending),
    or every frame when `targets` is None. Returns [(time, RGB image)] without duplicates."""
    picked: list[tuple[Fraction, Image.Image]] = []

    def take(t: Fraction, frame) -> None:
        if not picked or picked[-1][0] != t:
            picked.append((t, frame.to_image()))

    step = 1 / Fraction(rate) if rate else Fraction(0)
    last_t = None
    may_seek = True  # off right after a seek, until a target is taken: a far keyframe must not loop
    seek_helps = True  # off once a seek lands at or before where we were: keyframes too sparse
    sought_from = None
    while True:
        prev = None  # the latest decoded frame not after the next target: (time, frame)
        seek_to = None
        for frame in container.decode(stream):
            last_t = t = (Fraction(frame.pts) * stream.time_base if frame.pts is not None
                          else (last_t + step if last_t is not None else Fraction(0)))
            if sought_from is not None:
                seek_helps, sought_from = t > sought_from, None
            if targets is None:
                take(t, frame)
                continue
            while targets and targets[0] < t:  # those targets fall in the previous frame
                take(*(prev or (t, frame)))
                targets.popleft()
                may_seek = True
            if not targets:
                return picked
            prev = (t, frame)
            if may_seek and seek_helps and targets[0] - t > _SEEK_GAP_S:
                seek_to, sought_from = targets[0], t
                break
        if seek_to is None:  # end of stream: the remaining targets fall in the last frame
            if prev is not None:
                take(*prev)
            return picked
        container.seek(int(seek_to / stream.time_base), stream=stream, backward=True)  # to a keyframe <= seek_to
        may_seek = False
