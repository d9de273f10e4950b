"""``hybrid-data``: build training and evaluation datasets.

One subcommand per dataset; ``digits`` writes the embedded default (scikit-learn's bundled
handwritten digits as LLaVA-format documents and videos, no download). A new dataset adds an
``_add_<name>(subparsers)`` that sets its own ``run`` function.
"""

from __future__ import annotations

import argparse
import sys
import time

from hybrid_mllm.core.cli import run_cli
from hybrid_mllm.demo import data_digits as dd

_DIGITS_EPILOG = f"""\
output (paths in the JSONL files are relative to OUT):
  OUT/images/*.png                     documents: grids of 12 px digits in 16 px cells, dark on white
  OUT/videos/<id>/frame_000.png ...    videos: one folder of 32x32 PNG frames per clip, one digit a frame
  OUT/train.jsonl                      grids that fit in <= {dd.TRAIN_MAX_TILES} tiles of {dd.TILE_PX} px \
(up to 4x4 digits, and 8x2 / 2x8)
  OUT/eval_low.jsonl                   the same sizes, held-out digit images
  OUT/eval_high.jsonl                  7x7 .. 8x8 grids (16 tiles), held-out digit images
  OUT/eval_huge.jsonl                  15x15 .. 16x16 grids (64 tiles), held-out digit images
  OUT/video_train.jsonl                clips of {dd.TRAIN_FRAMES[0]}..{dd.TRAIN_FRAMES[1]} frames
  OUT/video_eval_low.jsonl             the same lengths, held-out digit images
  OUT/video_eval_high.jsonl            clips of --high-frames frames, held-out digit images
  OUT/video_eval_huge.jsonl            clips of --huge-frames frames, held-out digit images
  OUT/meta.json                        settings, seed, counts and question types per split

questions (one per sample, asked before the image or video; qtype in each line):
  digit_at      What digit is in row 2, column 3?       -> 7
  read_row      Read row 2.                              -> 3914
  count         How many 7s are there?                   -> 2
  frame_digit   Which digit appears in frame 3?          -> 4
  count_frames  How many frames show a 3?                -> 2
  first_frame   In which frame does a 5 first appear?    -> 6
Every split asks only about rows, columns and frames 1..{dd.MAX_INDEX}, the numbers training covers.
Each line also holds "grid" (images) or "frames" (videos) with the digit labels, "source" (indices
into sklearn's load_digits()) and "ask" (the question's parameters), for scoring by type and position.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the epilog's layout and shows each option's default."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-data", description="Build datasets for training and evaluation.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_digits(sub)
    return p


def _add_digits(sub) -> None:
    d = sub.add_parser(
        "digits", formatter_class=_Formatter, epilog=_DIGITS_EPILOG,
        help="the embedded default: documents and videos of handwritten digits (no download)",
        description="Write LLaVA-format image and video datasets built from scikit-learn's bundled 8x8\n"
                    "handwritten digits (1797 images): train at low resolution / few frames, evaluate at\n"
                    "the same (eval_low) and at high and very high resolution / many frames (eval_high,\n"
                    "eval_huge). Train and eval "
                    "use disjoint digit images. The same seed and sizes give identical files.")
    d.add_argument("out", metavar="OUT", help="output folder; built beside it and renamed into place when complete")
    d.add_argument("--seed", type=int, default=dd.DEFAULT_SEED, help="random seed of every choice")
    d.add_argument("--train-images", type=int, default=dd.DEFAULT_TRAIN_IMAGES, metavar="N",
                   help="documents in train.jsonl")
    d.add_argument("--eval-images", type=int, default=dd.DEFAULT_EVAL_IMAGES, metavar="N",
                   help="documents in each of eval_low, eval_high and eval_huge.jsonl")
    d.add_argument("--train-videos", type=int, default=dd.DEFAULT_TRAIN_VIDEOS, metavar="N",
                   help="clips in video_train.jsonl")
    d.add_argument("--eval-videos", type=int, default=dd.DEFAULT_EVAL_VIDEOS, metavar="N",
                   help="clips in each of video_eval_low, video_eval_high and video_eval_huge.jsonl")
    d.add_argument("--high-frames", type=int, default=dd.DEFAULT_HIGH_FRAMES, metavar="N",
                   help=f"frames per video_eval_high clip (more than {dd.TRAIN_FRAMES[1]})")
    d.add_argument("--huge-frames", type=int, default=dd.DEFAULT_HUGE_FRAMES, metavar="N",
                   help=f"frames per video_eval_huge clip (more than {dd.TRAIN_FRAMES[1]})")
    d.add_argument("--eval-fraction", type=float, default=dd.DEFAULT_EVAL_FRACTION, metavar="F",
                   help="share of the 1797 digit images held out for evaluation")
    d.add_argument("--force", action="store_true", help="replace OUT if it exists")
    d.set_defaults(run=_run_digits)


def _run_digits(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    counts = dd.make_digits_dataset(
        args.out, seed=args.seed, train_images=args.train_images, eval_images=args.eval_images,
        train_videos=args.train_videos, eval_videos=args.eval_videos, high_frames=args.high_frames,
        huge_frames=args.huge_frames, eval_fraction=args.eval_fraction, force=args.force)
    listed = ", ".join(f"{name} {n}" for name, n in counts.items())
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {listed} (see {args.out}/meta.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.run(args)


def entry() -> None:
    sys.exit(run_cli(main))
