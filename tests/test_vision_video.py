"""Video frame sampling from files (PyAV), folders of frames and lists of frames.

Test videos are written here with PyAV; frame i (or second i) is a solid colour that
encodes i, so the tests can tell which frames were sampled after lossy compression.
"""

import sys
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.vision import VideoError, load_video
from hybrid_mllm.core.vision import video as video_module
from hybrid_mllm.core.vision.video import sample_times

av = pytest.importorskip("av")


def _colour(i):
    """64 colours, 85 apart per channel, so codec noise cannot confuse two of them."""
    return (i & 3) * 85, ((i >> 2) & 3) * 85, ((i >> 4) & 3) * 85


def _index(image):
    pixel = image.getpixel((image.width // 2, image.height // 2))
    return min(range(64), key=lambda i: sum(abs(a - b) for a, b in zip(_colour(i), pixel)))


def _write_video(path, n_frames, *, rate=10, codec="libx264", per_colour=1, gop=None):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
            stream.options = {"keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(n_frames):
            pixels = np.empty((48, 64, 3), np.uint8)
            pixels[:] = _colour(i // per_colour)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {
        "mp4": _write_video(root / "clip.mp4", 30),  # 3 s at 10 fps, frame i has colour i
        "webm": _write_video(root / "clip.webm", 30, codec="libvpx-vp9"),  # duration in the container only
        "long": _write_video(root / "long.mp4", 600, per_colour=10, gop=10),  # 60 s, colour = second
        "one_keyframe": _write_video(root / "one_key.mp4", 300, per_colour=10, gop=1000),  # 30 s
    }


def _sampled(result):
    return [_index(frame) for frame in result.frames]


def _error(match, *args, **kwargs):
    with pytest.raises(VideoError, match=match) as info:
        load_video(*args, **kwargs)
    error = info.value
    assert isinstance(error, HybridError) and "\n" not in str(error)
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return str(error)


class _CountingSeeks:
    """Wraps a PyAV container to count seeks (the container type itself cannot be patched)."""

    def __init__(self, container, log):
        self._container, self._log = container, log

    def __getattr__(self, name):
        return getattr(self._container, name)

    def seek(self, *args, **kwargs):
        self._log.append(args)
        return self._container.seek(*args, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)


@pytest.fixture
def seeks(monkeypatch):
    log = []
    real_open = video_module._open
    monkeypatch.setattr(video_module, "_open", lambda av_, path: _CountingSeeks(real_open(av_, path), log))
    return log


# --- sampling rule ------------------------------------------------------------------------------

def test_sample_times():
    assert sample_times(Fraction(3), 3, None) == [Fraction(1, 2), Fraction(3, 2), Fraction(5, 2)]
    assert sample_times(Fraction(3), None, 2.0) == [Fraction(j, 2) for j in range(6)]
    assert sample_times(Fraction(3), 2, 2.0) == [Fraction(1, 2), Fraction(2)]  # 6 times -> indices 1, 4
    assert sample_times(Fraction(3), None, None) is None
    assert sample_times(Fraction(0), None, 1.0) == [0]


# --- video files --------------------------------------------------------------------------------

def test_uniform_sampling_picks_segment_centres(videos):
    result = load_video(videos["mp4"], max_frames=3)
    assert _sampled(result) == [5, 15, 25]  # centres of [0,1), [1,2), [2,3) s
    assert result.timestamps == [0.5, 1.5, 2.5]
    assert result.source_fps == 10 and result.duration == 3
    assert all(f.mode == "RGB" and f.size == (64, 48) for f in result.frames)
    assert _sampled(load_video(videos["webm"], max_frames=4)) == [3, 11, 18, 26]  # 0.375, 1.125, ... s


def test_fps_sampling_and_cap(videos):
    result = load_video(videos["mp4"], fps=2, max_frames=None)
    assert _sampled(result) == [0, 5, 10, 15, 20, 25] and result.timestamps == [0, 0.5, 1, 1.5, 2, 2.5]
    assert _sampled(load_video(videos["mp4"], fps=2, max_frames=3)) == [5, 15, 25]  # 6 times -> 2nd, 4th, 6th
    assert _sampled(load_video(videos["webm"], fps=2, max_frames=None)) == [0, 5, 10, 15, 20, 25]


def test_never_more_frames_than_exist(videos):
    for kwargs in (dict(max_frames=100), dict(fps=30, max_frames=None), dict(max_frames=None)):
        result = load_video(videos["mp4"], **kwargs)
        assert _sampled(result) == list(range(30)), kwargs
        assert result.timestamps == pytest.approx([i / 10 for i in range(30)])


def test_long_video_seeks_to_sparse_samples(videos, seeks):
    result = load_video(videos["long"], max_frames=6)
    assert _sampled(result) == [5, 15, 25, 35, 45, 55]  # centres of 10 s segments
    assert len(seeks) == 6  # decoded around each sample, not the whole minute


def test_sparse_keyframes_stop_seeking(videos, seeks):
    # One keyframe: every seek lands back at 0 s, so after one try it decodes straight through.
    result = load_video(videos["one_keyframe"], max_frames=3)
    assert _sampled(result) == [5, 15, 25]
    assert len(seeks) == 1


# --- folders and lists of frames ----------------------------------------------------------------

@pytest.fixture
def frame_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):  # frame0.png ... frame11.png: a plain string sort puts frame10 before frame2
        Image.new("RGB", (16, 8), _colour(i)).save(folder / f"frame{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    return folder


def test_folder_natural_order_and_sampling(frame_folder):
    every = load_video(frame_folder, max_frames=None)
    assert _sampled(every) == list(range(12))
    assert every.timestamps == list(range(12)) and every.source_fps == 1 and every.duration == 12
    assert _sampled(load_video(frame_folder, max_frames=3)) == [2, 6, 10]
    assert _sampled(load_video(str(frame_folder), fps=0.5, max_frames=None, sequence_fps=2)) == [0, 4, 8]


def test_list_of_frames_keeps_given_order(frame_folder):
    paths = [frame_folder / f"frame{i}.png" for i in (3, 1, 2)]
    result = load_video(paths, max_frames=None)
    assert _sampled(result) == [3, 1, 2]


def test_frames_of_different_sizes(frame_folder):
    Image.new("RGB", (8, 8)).save(frame_folder / "frame7.png")
    message = _error("different|same size", frame_folder, max_frames=None)
    assert "frame7.png" in message and "8x8" in message and "16x8" in message


def test_folder_and_list_mistakes(tmp_path, frame_folder):
    (tmp_path / "empty").mkdir()
    _error("no image files", tmp_path / "empty")
    _error("empty list", [])
    _error("missing.png: no such file", [frame_folder / "frame0.png", tmp_path / "missing.png"], max_frames=None)


# --- bad video files and settings ---------------------------------------------------------------

def test_bad_files(tmp_path, videos):
    _error("no such file", tmp_path / "nope.mp4")
    (tmp_path / "notes.mp4").write_text("hello, this is not a video\n" * 20)
    _error("not a video", tmp_path / "notes.mp4")
    (tmp_path / "zero.mp4").write_bytes(b"")
    _error("not a video|cannot be read", tmp_path / "zero.mp4")
    with av.open(str(tmp_path / "sound.wav"), "w") as container:  # audio only
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    _error("no video stream", tmp_path / "sound.wav")


def test_video_stream_without_frames(tmp_path, videos):
    # The WebM header and track list, cut inside the header of the first cluster (the frame
    # data): FFmpeg opens it, finds the video stream, and decodes no frame.
    data = videos["webm"].read_bytes()
    (tmp_path / "empty.webm").write_bytes(data[: data.index(b"\x1f\x43\xb6\x75") + 8])
    _error("no decodable frames", tmp_path / "empty.webm")


def test_settings_and_limits(videos):
    _error("max_frames=0", videos["mp4"], max_frames=0)
    _error("fps=0", videos["mp4"], fps=0)
    message = _error("max_pixels", videos["mp4"], max_pixels=1000)
    assert "64x48" in message


def test_missing_pyav_says_how_to_install(videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    _error("pip install av", videos["mp4"])
