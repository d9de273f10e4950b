"""Makers of bad (and awkward but valid) input files for the bad-input corpus.

Each maker writes into a folder and returns nothing; the corpus names the files in its
command lines. Everything is generated here, nothing binary is committed.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from hybrid_mllm.core.presets import PRESET_DIR

TINY = PRESET_DIR / "mllm-tiny.yaml"


# --- YAML ----------------------------------------------------------------------------------------

MODEL = "model: {vocab_size: 263, d_model: 32, n_layer: 2, layers: [mamba, attention]}\n"

BILLION_LAUGHS = "".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)]
    + ["model: *a8\n"])


def text(name: str, content: str | bytes):
    """A maker that writes `content` to `name`."""
    def make(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return make


def random_bytes(name: str, n: int):
    return text(name, np.random.default_rng(0).bytes(n))


def both(*makers):
    """A maker that runs each of `makers`."""
    def make(root: Path) -> None:
        for maker in makers:
            maker(root)
    return make


def tiny_config_with(name: str, old: str, new: str):
    """A maker that writes the mllm-tiny preset with `old` replaced by `new`."""
    source = TINY.read_text()
    assert old in source, old
    return text(name, source.replace(old, new))


def vision_train_config(name: str, lines: list[str], trainable: list[str]):
    """A maker for a training config of the mllm-tiny model, one stage on root/d.jsonl = `lines`."""
    def make(root: Path) -> None:
        (root / "d.jsonl").write_text("".join(lines))
        config = yaml.safe_load(TINY.read_text())
        config["train"] = {"output_dir": str(root / "run"), "stages": [
            {"name": "align", "data": "d.jsonl", "trainable": trainable, "lr": 0.01, "steps": 1}]}
        (root / name).write_text(json.dumps(config))  # JSON is YAML
    return make


def train_config(name: str, **stage):
    """A maker for a training config (tiny model, one stage) with `stage` options overridden."""
    def make(root: Path) -> None:
        (root / "d.jsonl").write_text(_record({"id": "0"}))
        stages = [{"name": "align", "data": "d.jsonl", "trainable": ["connector"], "lr": 0.01, "steps": 1, **stage}]
        config = {"model": {"vocab_size": 263, "d_model": 32, "n_layer": 1, "layers": ["mamba"]},
                  "train": {"output_dir": str(root / "run"), "stages": stages}}
        (root / name).write_text(json.dumps(config))  # JSON is YAML
    return make


# --- images --------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A 57-byte PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def truncated(name: str, fmt: str):
    """A maker for a noisy 64x64 image whose encoded bytes are cut in half."""
    data = _encoded(noise(64, 64), fmt)
    return text(name, data[: len(data) // 2])


def image(name: str, make_image):
    """A maker that saves the PIL image `make_image()` as `name` (format from the suffix)."""
    def make(root: Path) -> None:
        make_image().save(root / name)
    return make


VALID_IMAGES = {  # name -> (file name, PIL image factory, size): awkward but valid, must load as RGB
    "1x1": ("one.png", lambda: Image.new("RGB", (1, 1), (200, 10, 10)), (1, 1)),
    "1x4000": ("tall.png", lambda: Image.new("L", (1, 4000), 128), (1, 4000)),
    "4000x1": ("wide.png", lambda: Image.new("L", (4000, 1), 128), (4000, 1)),
    "cmyk-jpeg": ("cmyk.jpg", lambda: Image.new("CMYK", (40, 30), (0, 200, 200, 0)), (40, 30)),
    "16-bit-png": ("deep.png", lambda: Image.fromarray(np.full((30, 40), 40000, np.uint16)), (40, 30)),
    "rgba": ("alpha.png", lambda: Image.new("RGBA", (40, 30), (0, 0, 255, 100)), (40, 30)),
    "palette": ("palette.png", lambda: noise(40, 30).convert("P", palette=Image.Palette.ADAPTIVE), (40, 30)),
    "gray-alpha": ("la.png", lambda: Image.new("LA", (40, 30), (90, 128)), (40, 30)),
}


# --- videos --------------------------------------------------------------------------------------

def mkv_bytes(codec: str = "mpeg4", n_frames: int = 3) -> bytes:
    """A tiny Matroska video (64x48), written with PyAV."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def valid_video(name: str):
    def make(root: Path) -> None:
        (root / name).write_bytes(mkv_bytes())
    return make


def zero_frame_video(name: str):
    """The header and track list of a video, cut where the first cluster (the frames) starts."""
    def make(root: Path) -> None:
        data = mkv_bytes()
        (root / name).write_bytes(data[: data.index(b"\x1f\x43\xb6\x75") + 8])
    return make


def unknown_codec_video(name: str):
    """A Matroska file whose codec id is one FFmpeg has no decoder for."""
    def make(root: Path) -> None:
        (root / name).write_bytes(mkv_bytes().replace(b"V_MPEG4/ISO/ASP", b"V_QQQQQ/ISO/ASP"))
    return make


def audio_only(name: str):
    def make(root: Path) -> None:
        import av

        with av.open(str(root / name), "w") as container:
            stream = container.add_stream("pcm_s16le", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
    return make


def frames_folder(name: str, sizes: list[tuple[int, int]]):
    """A folder of PNG frames of the given (width, height) sizes; none: an empty folder."""
    def make(root: Path) -> None:
        folder = root / name
        folder.mkdir()
        for i, size in enumerate(sizes):
            Image.new("RGB", size, (10 * i, 0, 0)).save(folder / f"frame{i}.png")
    return make


# --- checkpoints ---------------------------------------------------------------------------------

def checkpoint(root: Path) -> Path:
    """A random-weight mllm-tiny checkpoint at root/ckpt."""
    from hybrid_mllm.core.build import build_mllm
    from hybrid_mllm.core.checkpoint import save_checkpoint
    from hybrid_mllm.core.config import load_config

    config = load_config(TINY)
    model, tokenizer = build_mllm(config, seed=0)
    return save_checkpoint(model, config, root / "ckpt", tokenizer=tokenizer)


def broken_checkpoint(change):
    """A maker for a checkpoint at root/ckpt, then `change(ckpt_dir)` applied to it."""
    def make(root: Path) -> None:
        change(checkpoint(root))
    return make


def truncate_weights(ckpt: Path) -> None:
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def retype_weights(ckpt: Path) -> None:
    """Every tensor stored as int32 (same shapes)."""
    from safetensors.torch import load_file, save_file

    path = ckpt / "model.safetensors"
    save_file({k: v.to(torch.int32) for k, v in load_file(path).items()}, path)


def drop_tensors(ckpt: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = ckpt / "model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if not k.startswith("connector.")}, path)


def pickle_weights(ckpt: Path) -> None:
    """A pickle (what torch.save writes) renamed to model.safetensors; never unpickled."""
    import pickle  # writing one is the point: the library must refuse to read it

    (ckpt / "model.safetensors").write_bytes(pickle.dumps({"lm.embed.weight": [0.0] * 16}))


def other_architecture(ckpt: Path) -> None:
    """The config of the text-only hybrid-tiny preset over mllm-tiny's weights."""
    (ckpt / "config.yaml").write_text((PRESET_DIR / "hybrid-tiny.yaml").read_text())


def hf_config_only(ckpt: Path) -> None:
    (ckpt / "config.yaml").unlink()
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["JambaForCausalLM"], "model_type": "jamba"}))


# --- data sets -----------------------------------------------------------------------------------

def _record(fields: dict, image: str | None = None) -> str:
    turns = [{"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "red"}]
    if image is not None:
        turns[0]["value"] = "<image>\n" + turns[0]["value"]
        fields = {**fields, "image": image}
    return json.dumps({"conversations": turns, **fields}) + "\n"


def dataset(lines: list[str]):
    """A maker for root/ckpt (a checkpoint), root/img.png and root/d.jsonl holding `lines`."""
    def make(root: Path) -> None:
        checkpoint(root)
        Image.new("RGB", (32, 32), (200, 0, 0)).save(root / "img.png")
        (root / "d.jsonl").write_text("".join(lines))
    return make


GOOD_RECORD = _record({"id": "ok"}, image="img.png")
RECORD = _record


# --- plugins -------------------------------------------------------------------------------------

def plugin(module: str, source: str):
    """A maker for an installed-looking plugin: root/site/<module>.py and its dist-info with a
    ``hybrid_mllm`` entry point (the runner puts root/site on sys.path)."""
    def make(root: Path) -> None:
        site = root / "site"
        info = site / f"{module}-0.1.dist-info"
        info.mkdir(parents=True)
        (site / f"{module}.py").write_text(source)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[hybrid_mllm]\n{module} = {module}\n")
    return make


DUPLICATE_MIXER = """\
import pluggy

hookimpl = pluggy.HookimplMarker("hybrid_mllm")


@hookimpl
def register_mixers(register):
    register("mamba", object)
"""

FAILING_HOOK = """\
import pluggy

hookimpl = pluggy.HookimplMarker("hybrid_mllm")


@hookimpl
def register_connectors(register):
    raise KeyError("d_model")
"""
