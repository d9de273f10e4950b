"""The embedded default dataset: LLaVA-format "documents" and "videos" of handwritten digits.

Built from scikit-learn's bundled 8x8 digits (1797 images, nothing to download), so a small
hybrid MLLM trains on a CPU in minutes at low resolution / few frames and is evaluated at high
resolution / many frames: the MMJamba claim, measured.

Pixels. Each digit is upscaled bilinearly from 8x8 to 12x12 px (intensity 0..16 -> 0..255) and
drawn as dark ink on white paper, like a scanned document, centred in a 16 px cell. Files are
8-bit grayscale PNGs: lossless, because 12 px digits do not survive video codecs, and written
with the standard library's zlib, so generating needs neither Pillow nor a codec.

Documents. A rows x cols grid of cells. The encoder tile is 32 px, i.e. 2x2 digits per tile.
- train, eval_low: every grid with rows, cols <= 8 that fits in <= 4 tiles at its own size: up
  to 4x4 digits (64x64 px), and also the tall / wide 8x2 and 2x8 ones (32x128 px), so that every
  row and column index 1..8 occurs in training.
- eval_high: 7x7, 7x8, 8x7 and 8x8 grids (112..128 px a side: 16 tiles, 4x the training size).
- eval_huge: 15x15 .. 16x16 grids (240..256 px a side: 64 tiles, 16x the training size).
  Questions in every split ask only about row / column indices 1..8, which training covers:
  indices never seen in training do not transfer. A (row, column) pair such as (6, 6) occurs
  only in big grids, although both of its indices occur in training.

Videos. A folder of 32x32 px frames (one encoder tile each), ``frame_000.png``, ``frame_001.png``,
...; each frame shows one digit in a centred 16 px cell. Questions count frames from 1: frame k
is ``frame_{k-1:03d}.png``.
- video_train, video_eval_low: clips of 2..8 frames.
- video_eval_high, video_eval_huge: clips of `high_frames` (default 32) and `huge_frames`
  (default 128) frames. `frame_digit` and `first_frame` ask only about frames 1..8, the indices
  training covers; `count_frames` needs every frame. Load these clips with all their frames
  (``load_video(path, max_frames=None)``).

Questions, one per sample, with short answers; the question comes before the image or video
(``"What digit is in row 2, column 3?\n<image>"``), so a model reads the page knowing what it
looks for (a recurrent layer cannot look back at the page once it has passed it):
  digit_at      "What digit is in row 2, column 3?"        -> "7"
  read_row      "Read row 2."                               -> "3914" (left to right)
  count         "How many 7s are there?"                    -> "2" (digit drawn from 0..9: 0 occurs)
  frame_digit   "Which digit appears in frame 3?"           -> "4"
  count_frames  "How many frames show a 3?"                 -> "2" (digit drawn from 0..9: 0 occurs)
  first_frame   "In which frame does a 5 first appear?"     -> "6" (the digit always appears)
Counts in the high and huge splits go beyond any training answer (more cells, more frames): they measure
extrapolation, and are reported as such.

Splits are disjoint in the digit images: a seeded permutation of the 1797 digits gives a train
pool and an eval pool (`eval_fraction`), and eval samples draw only from the eval pool. Each
split has its own random stream derived from the seed, so the eval sets stay the same when the
train sizes change. Every JSONL line records, besides ``id``, ``image``/``video`` (relative to
the output folder), ``conversations`` and ``qtype``: ``ask`` (the question's parameters),
``grid`` (images: the digit labels, row by row) or ``frames`` (videos: one label per frame), and
``source`` (indices into ``load_digits()``, laid out like ``grid`` / ``frames``), so answers can
be recomputed and accuracy broken down by question type and position.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybrid_mllm.core.errors import HybridError

from .render import CELL_PX, DIGIT_PX, TILE_PX, digit_ink, png, render_frame, render_page

MAX_INDEX = 8  # the largest row, column or frame number any question asks about
TRAIN_MAX_TILES = 4
TRAIN_FRAMES = (2, MAX_INDEX)  # clip lengths of video_train and video_eval_low, inclusive
HIGH_GRIDS = ((7, 7), (7, 8), (8, 7), (8, 8))
HUGE_GRIDS = ((15, 15), (15, 16), (16, 15), (16, 16))
IMAGE_QTYPES = {"digit_at": 2, "read_row": 1, "count": 1}  # relative weights; position questions
VIDEO_QTYPES = {"frame_digit": 2, "count_frames": 1, "first_frame": 1}  # are what resolution tests

DEFAULT_SEED = 0
DEFAULT_TRAIN_IMAGES = 6000
DEFAULT_EVAL_IMAGES = 300
DEFAULT_TRAIN_VIDEOS = 2000
DEFAULT_EVAL_VIDEOS = 200
DEFAULT_HIGH_FRAMES = 32
DEFAULT_HUGE_FRAMES = 128
FORMAT_VERSION = 2  # 2: question before the placeholder; eval_huge / video_eval_huge
DEFAULT_EVAL_FRACTION = 0.2


def _tiles(rows: int, cols: int) -> int:
    """Encoder tiles a rows x cols grid of cells covers at its own size."""
    per_tile = TILE_PX // CELL_PX
    return -(-rows // per_tile) * -(-cols // per_tile)


TRAIN_GRIDS = tuple((r, c) for r in range(1, MAX_INDEX + 1) for c in range(1, MAX_INDEX + 1)
                    if _tiles(r, c) <= TRAIN_MAX_TILES)


class DataError(HybridError):
    """A dataset cannot be generated as asked (bad sizes, the output folder in the way)."""


@dataclass(frozen=True)
class _Split:
    """One JSONL file: its name (also the id prefix), what it holds, how many, from which pool."""

    name: str
    kind: str  # "image" or "video"
    count: int
    pool: str  # "train" or "eval"
    size: str  # "low" (training sizes), "high" or "huge"
    stream: int  # which random stream of the seed it draws from


def make_digits_dataset(out_dir, *, seed: int = DEFAULT_SEED, train_images: int = DEFAULT_TRAIN_IMAGES,
                        eval_images: int = DEFAULT_EVAL_IMAGES, train_videos: int = DEFAULT_TRAIN_VIDEOS,
                        eval_videos: int = DEFAULT_EVAL_VIDEOS, high_frames: int = DEFAULT_HIGH_FRAMES,
                        huge_frames: int = DEFAULT_HUGE_FRAMES, eval_fraction: float = DEFAULT_EVAL_FRACTION,
                        force: bool = False, progress: bool = True) -> dict[str, int]:
    """Write the digits dataset (see the module docstring) to `out_dir`; returns {split: samples}.

    eval_images / eval_videos are per eval split (low, high and huge). The folder is built next to
    `out_dir` and renamed into place at the end, so `out_dir` is either complete or absent; an
    existing `out_dir` is replaced only with `force`. Same arguments -> identical files.
    """
    out = Path(out_dir)
    sizes = {"train_images": train_images, "eval_images": eval_images, "train_videos": train_videos,
             "eval_videos": eval_videos}
    frames = {"high": high_frames, "huge": huge_frames}
    _check_settings(seed, sizes, frames, eval_fraction)
    splits = _splits(**sizes)
    _check_target(out, force)
    images, labels = _load_digits()
    pools = _pools(len(labels), eval_fraction, seed)
    _check_pools(pools, frames)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        (tmp / "images").mkdir()
        (tmp / "videos").mkdir()
        qtypes = _write_splits(tmp, splits, seed, pools, digit_ink(images), labels, frames, progress)
        meta = _meta(seed, sizes, splits, pools, qtypes, frames, eval_fraction)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {s.name: s.count for s in splits}


def written_with(out_dir, *, seed: int = DEFAULT_SEED, **settings) -> bool:
    """Whether `out_dir` holds a complete data set of this format made with `seed` and these
    `make_digits_dataset` settings (the ones left out at their defaults)."""
    meta = Path(out_dir) / "meta.json"
    if not meta.is_file():
        return False
    try:
        old = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    wanted = {"train_images": DEFAULT_TRAIN_IMAGES, "eval_images": DEFAULT_EVAL_IMAGES,
              "train_videos": DEFAULT_TRAIN_VIDEOS, "eval_videos": DEFAULT_EVAL_VIDEOS,
              "high_frames": DEFAULT_HIGH_FRAMES, "huge_frames": DEFAULT_HUGE_FRAMES,
              "eval_fraction": DEFAULT_EVAL_FRACTION, **settings}
    return old.get("format_version") == FORMAT_VERSION and old.get("seed") == seed and old.get("settings") == wanted


# --- settings --------------------------------------------------------------------------------------

def _splits(train_images: int, eval_images: int, train_videos: int, eval_videos: int) -> list[_Split]:
    return [_Split("train", "image", train_images, "train", "low", 1),
            _Split("eval_low", "image", eval_images, "eval", "low", 2),
            _Split("eval_high", "image", eval_images, "eval", "high", 3),
            _Split("eval_huge", "image", eval_images, "eval", "huge", 7),
            _Split("video_train", "video", train_videos, "train", "low", 4),
            _Split("video_eval_low", "video", eval_videos, "eval", "low", 5),
            _Split("video_eval_high", "video", eval_videos, "eval", "high", 6),
            _Split("video_eval_huge", "video", eval_videos, "eval", "huge", 8)]


def _check_settings(seed: int, sizes: dict[str, int], frames: dict[str, int], eval_fraction: float) -> None:
    """Every problem with the arguments, in one error."""
    problems = []
    if not isinstance(seed, int) or seed < 0:
        problems.append(f"seed={seed!r}: use a non-negative integer")
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 0:
            problems.append(f"{name}={size!r}: use a non-negative integer (0 writes an empty file)")
    for size, default in (("high", DEFAULT_HIGH_FRAMES), ("huge", DEFAULT_HUGE_FRAMES)):
        n = frames[size]
        if not isinstance(n, int) or n <= TRAIN_FRAMES[1]:
            problems.append(f"{size}_frames={n!r}: video_eval_{size} clips must be longer than the training "
                            f"clips ({TRAIN_FRAMES[1]} frames); use e.g. {default}")
    if not 0 < eval_fraction < 1:
        problems.append(f"eval_fraction={eval_fraction!r}: use a fraction between 0 and 1, "
                        f"e.g. {DEFAULT_EVAL_FRACTION}")
    if problems:
        raise DataError("digits dataset: " + "; ".join(problems))


def _check_target(out: Path, force: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir() or out.is_symlink():
        raise DataError(f"{out}: exists and is a file or a link, not a folder; remove it or choose another "
                        "output folder")
    if not force:
        raise DataError(f"{out}: already exists; choose another output folder, or replace it with "
                        "--force (force=True)")


def _check_pools(pools: dict[str, np.ndarray], frames: dict[str, int]) -> None:
    """Samples use distinct digit images, so each pool must hold the most digits one sample needs."""
    needs = {"train": (max(max(r * c for r, c in TRAIN_GRIDS), TRAIN_FRAMES[1]), "lower eval_fraction"),
             "eval": (max(max(r * c for r, c in HUGE_GRIDS), *frames.values()),
                      "raise eval_fraction or lower high_frames / huge_frames")}
    for name, (need, fix) in needs.items():
        if len(pools[name]) < need:
            raise DataError(f"the {name} pool has {len(pools[name])} of the 1797 digit images but one sample "
                            f"needs {need} different ones; {fix}")


# --- digits and pixels -----------------------------------------------------------------------------

def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float intensities 0..16, labels (1797,) int) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits  # imported here: it takes a second or two
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def _pools(n: int, eval_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Disjoint train / eval pools of digit indices, from a permutation seeded by `seed`."""
    order = np.random.default_rng([seed, 0]).permutation(n)
    n_eval = round(n * eval_fraction)
    return {"train": order[n_eval:], "eval": order[:n_eval]}


# --- questions -------------------------------------------------------------------------------------

def _a(digit: int) -> str:
    return f"{'an' if digit == 8 else 'a'} {digit}"


def _pick(rng: np.random.Generator, weights: dict[str, int]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[rng.choice(len(names), p=p / p.sum())]


def _image_question(rng: np.random.Generator, grid: np.ndarray, qtype: str) -> tuple[str, str, dict]:
    """(question, answer, ask) about a (rows, cols) grid of digit labels; rows and columns
    asked stay <= 8."""
    rows, cols = min(grid.shape[0], MAX_INDEX), min(grid.shape[1], MAX_INDEX)
    if qtype == "digit_at":
        r, c = int(rng.integers(rows)), int(rng.integers(cols))
        return f"What digit is in row {r + 1}, column {c + 1}?", str(grid[r, c]), {"row": r + 1, "col": c + 1}
    if qtype == "read_row":
        r = int(rng.integers(rows))
        return f"Read row {r + 1}.", "".join(str(d) for d in grid[r]), {"row": r + 1}
    digit = int(rng.integers(10))
    return f"How many {digit}s are there?", str(int((grid == digit).sum())), {"digit": digit}


def _video_question(rng: np.random.Generator, frames: np.ndarray, qtype: str) -> tuple[str, str, dict]:
    """(question, answer, ask) about a clip's (n,) digit labels; frame numbers asked stay <= 8."""
    askable = min(len(frames), MAX_INDEX)
    if qtype == "frame_digit":
        k = int(rng.integers(askable))
        return f"Which digit appears in frame {k + 1}?", str(frames[k]), {"frame": k + 1}
    if qtype == "first_frame":
        digit = int(frames[rng.integers(askable)])  # shown within the askable frames: so is its first time
        first = int(np.argmax(frames == digit)) + 1
        return f"In which frame does {_a(digit)} first appear?", str(first), {"digit": digit}
    digit = int(rng.integers(10))
    return f"How many frames show {_a(digit)}?", str(int((frames == digit).sum())), {"digit": digit}


def _conversation(placeholder: str, question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"{question}\n{placeholder}"}, {"from": "gpt", "value": answer}]


def blind_share(record: dict) -> float | None:
    """What a reader that knows every digit of a record but no position would score on its
    digit_at / frame_digit question, naming a random cell (frame): the share of the grid's
    cells (the clip's frames) that hold the answer. None for the other question types.
    Position accuracy means something only above this, not above 10 %."""
    cells = {"digit_at": "grid", "frame_digit": "frames"}.get(record.get("qtype"))
    if cells is None:
        return None
    digits = np.asarray(record[cells]).ravel()
    return float((digits == int(record["conversations"][1]["value"])).mean())


# --- samples and files -----------------------------------------------------------------------------

@dataclass
class _Context:
    """What every sample of a run draws on."""

    root: Path
    ink: np.ndarray  # (1797, 12, 12) uint8
    labels: np.ndarray  # (1797,)
    frames: dict[str, int]  # clip length of the high and huge splits


def _image_record(ctx: _Context, sid: str, split: _Split, rng: np.random.Generator, pool: np.ndarray) -> dict:
    shapes = {"low": TRAIN_GRIDS, "high": HIGH_GRIDS, "huge": HUGE_GRIDS}[split.size]
    rows, cols = shapes[rng.integers(len(shapes))]
    source = rng.choice(pool, size=(rows, cols), replace=False)
    grid = ctx.labels[source]
    qtype = _pick(rng, IMAGE_QTYPES)
    question, answer, ask = _image_question(rng, grid, qtype)
    path = f"images/{sid}.png"
    (ctx.root / path).write_bytes(png(render_page(ctx.ink[source])))
    return {"id": sid, "image": path, "conversations": _conversation("<image>", question, answer),
            "qtype": qtype, "ask": ask, "grid": grid.tolist(), "source": source.tolist()}


def _video_record(ctx: _Context, sid: str, split: _Split, rng: np.random.Generator, pool: np.ndarray) -> dict:
    low, high = TRAIN_FRAMES if split.size == "low" else (ctx.frames[split.size],) * 2
    source = rng.choice(pool, size=int(rng.integers(low, high + 1)), replace=False)
    frames = ctx.labels[source]
    qtype = _pick(rng, VIDEO_QTYPES)
    question, answer, ask = _video_question(rng, frames, qtype)
    path = f"videos/{sid}"
    (ctx.root / path).mkdir()
    for k, index in enumerate(source):
        (ctx.root / path / f"frame_{k:03d}.png").write_bytes(png(render_frame(ctx.ink[index])))
    return {"id": sid, "video": path, "conversations": _conversation("<video>", question, answer),
            "qtype": qtype, "ask": ask, "frames": frames.tolist(), "source": source.tolist()}


def _write_splits(root: Path, splits: list[_Split], seed: int, pools: dict[str, np.ndarray], ink: np.ndarray,
                  labels: np.ndarray, frames: dict[str, int], progress: bool) -> dict[str, dict[str, int]]:
    """Write every split's samples and JSONL file; returns {split: {qtype: samples}}."""
    ctx = _Context(root, ink, labels, frames)
    qtypes = {}
    with tqdm(total=sum(s.count for s in splits), unit="sample", disable=None if progress else True) as bar:
        for split in splits:
            bar.set_description(split.name)
            make = _image_record if split.kind == "image" else _video_record
            rng = np.random.default_rng([seed, split.stream])
            counts = Counter()
            with open(root / f"{split.name}.jsonl", "w", encoding="utf-8") as f:
                for i in range(split.count):
                    record = make(ctx, f"{split.name}-{i:05d}", split, rng, pools[split.pool])
                    f.write(json.dumps(record) + "\n")
                    counts[record["qtype"]] += 1
                    bar.update()
            qtypes[split.name] = dict(sorted(counts.items()))
    return qtypes


def _meta(seed: int, sizes: dict[str, int], splits: list[_Split], pools: dict[str, np.ndarray], qtypes: dict,
          frames: dict[str, int], eval_fraction: float) -> dict:
    """meta.json: everything needed to understand, regenerate and evaluate the dataset."""
    train_grids = [f"{r}x{c}" for r, c in TRAIN_GRIDS]
    return {
        "generator": "hybrid-data digits",
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "settings": {**sizes, "high_frames": frames["high"], "huge_frames": frames["huge"],
                     "eval_fraction": eval_fraction},
        "rendering": {"digits": "sklearn.datasets.load_digits(): 1797 images of 8x8, intensities 0..16",
                      "digit_px": DIGIT_PX, "cell_px": CELL_PX, "tile_px": TILE_PX,
                      "style": "dark ink (0) on white paper (255), 8-bit grayscale PNG",
                      "upscaling": "bilinear, half-pixel centres, 0..16 -> 0..255"},
        "grids": {"shape": "ROWSxCOLS of digits", "train": train_grids, "eval_low": train_grids,
                  "eval_high": [f"{r}x{c}" for r, c in HIGH_GRIDS],
                  "eval_huge": [f"{r}x{c}" for r, c in HUGE_GRIDS]},
        "clip_frames": {"video_train": list(TRAIN_FRAMES), "video_eval_low": list(TRAIN_FRAMES),
                        "video_eval_high": [frames["high"]] * 2, "video_eval_huge": [frames["huge"]] * 2},
        "qtype_weights": {"image": IMAGE_QTYPES, "video": VIDEO_QTYPES},
        "asked_indices": f"rows, columns and frames 1..{MAX_INDEX} in every split",
        "pools": {name: len(pool) for name, pool in pools.items()},
        "counts": {s.name: s.count for s in splits},
        "qtypes": qtypes,
        "notes": [
            (f"Every split asks only about row, column and frame numbers 1..{MAX_INDEX}, all of which occur in "
             "training (rows 5..8 in the tall 5x1 .. 8x2 grids, columns 5..8 in the wide 1x5 .. 2x8 grids, "
             "frames in 8-frame clips): indices never seen in training do not transfer."),
            ("Questions come before their <image> / <video> placeholder."),
            ("In eval_high and eval_huge, a (row, column) pair with both numbers >= 3 and at least one >= 5 occurs in no "
             "training grid (see 'grids'); split digit_at accuracy by 'ask' to see whether pairs transfer."),
            ("count and count_frames in the high and huge splits have more cells / frames than any training sample: "
             "their answers measure extrapolation in counting."),
            ("Videos are folders of frames; frame k of a question is frame_{k-1:03d}.png. Load the high and "
             "huge clips with all their frames (load_video(path, max_frames=None))."),
            ("Train and eval samples draw digit images from disjoint pools ('pools'); 'source' in each line "
             "lists the indices into load_digits() it uses."),
        ],
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`; an existing `out` (with force) is removed only after."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f"{out.name}.old-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old)
