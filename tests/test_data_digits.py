"""The embedded default dataset (`hybrid-data digits`): files, answers, splits, sizes, determinism."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from hybrid_mllm.core.cli import run_cli
from hybrid_mllm.core.vision import load_image, select_grid
from hybrid_mllm.demo import cli_data
from hybrid_mllm.demo.data_digits import MAX_INDEX, TRAIN_GRIDS, DataError, _load_digits, blind_share, make_digits_dataset
from hybrid_mllm.demo.render import TILE_PX, digit_ink, render_frame, render_page

SIZES = {"train_images": 40, "eval_images": 12, "train_videos": 16, "eval_videos": 6}
IMAGE_SPLITS = ("train", "eval_low", "eval_high", "eval_huge")
VIDEO_SPLITS = ("video_train", "video_eval_low", "video_eval_high", "video_eval_huge")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "out"
    counts = make_digits_dataset(out, seed=3, progress=False, **SIZES)
    assert counts == {"train": 40, "eval_low": 12, "eval_high": 12, "eval_huge": 12, "video_train": 16,
                      "video_eval_low": 6, "video_eval_high": 6, "video_eval_huge": 6}
    return out


def _lines(root: Path, split: str) -> list[dict]:
    with open(root / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _frame_files(root: Path, record: dict) -> list[Path]:
    return sorted((root / record["video"]).iterdir())


def _size(root: Path, record: dict) -> tuple[int, int]:
    """(width, height) of an image sample, as decoded."""
    return load_image(root / record["image"]).size


# --- format ---------------------------------------------------------------------------------------

def test_lines_parse_and_reference_existing_files(dataset):
    for split in IMAGE_SPLITS + VIDEO_SPLITS:
        records = _lines(dataset, split)
        assert records, split
        for record in records:
            human, gpt = record["conversations"]
            assert human["from"] == "human" and gpt["from"] == "gpt"
            if split in IMAGE_SPLITS:
                assert human["value"].endswith("?\n<image>") or human["value"].endswith(".\n<image>")
                assert (dataset / record["image"]).is_file()
                assert not Path(record["image"]).is_absolute()
            else:
                assert human["value"].endswith("?\n<video>")
                names = [p.name for p in _frame_files(dataset, record)]
                assert names == [f"frame_{k:03d}.png" for k in range(len(record["frames"]))]
            assert record["id"] in (record.get("image") or record["video"])


def test_pixels_round_trip_through_png(dataset):
    """The hand-written PNG encoder: decoded pixels equal the rendered ones (the tool reads RGB)."""
    images, _ = _load_digits()
    ink = digit_ink(images)
    record = _lines(dataset, "eval_high")[0]
    decoded = np.asarray(load_image(dataset / record["image"]))
    expected = render_page(ink[np.array(record["source"])])
    np.testing.assert_array_equal(decoded, np.repeat(expected[..., None], 3, axis=-1))
    video = _lines(dataset, "video_train")[0]
    first = np.asarray(load_image(_frame_files(dataset, video)[0]))[..., 0]
    np.testing.assert_array_equal(first, render_frame(ink[video["source"][0]]))
    assert expected.min() == 0 and expected.max() == 255  # dark ink on white paper


# --- answers --------------------------------------------------------------------------------------

def _a(digit: str) -> str:
    return "an" if digit == "8" else "a"


def _recompute(record: dict) -> str:
    """The answer from the question text and the recorded labels alone."""
    question = record["conversations"][0]["value"].rsplit("\n", 1)[0]  # the question, then the placeholder
    qtype = record["qtype"]
    if qtype in ("digit_at", "read_row", "count"):
        grid = np.array(record["grid"])
        if m := re.fullmatch(r"What digit is in row (\d), column (\d)\?", question):
            assert qtype == "digit_at" and record["ask"] == {"row": int(m[1]), "col": int(m[2])}
            return str(grid[int(m[1]) - 1, int(m[2]) - 1])
        if m := re.fullmatch(r"Read row (\d)\.", question):
            assert qtype == "read_row" and record["ask"] == {"row": int(m[1])}
            return "".join(map(str, grid[int(m[1]) - 1]))
        m = re.fullmatch(r"How many (\d)s are there\?", question)
        assert qtype == "count" and m and record["ask"] == {"digit": int(m[1])}
        return str(int((grid == int(m[1])).sum()))
    frames = record["frames"]
    if m := re.fullmatch(r"Which digit appears in frame (\d)\?", question):
        assert qtype == "frame_digit" and record["ask"] == {"frame": int(m[1])}
        return str(frames[int(m[1]) - 1])
    if m := re.fullmatch(r"How many frames show (an?) (\d)\?", question):
        assert qtype == "count_frames" and m[1] == _a(m[2]) and record["ask"] == {"digit": int(m[2])}
        return str(frames.count(int(m[2])))
    m = re.fullmatch(r"In which frame does (an?) (\d) first appear\?", question)
    assert qtype == "first_frame" and m and m[1] == _a(m[2]) and record["ask"] == {"digit": int(m[2])}
    return str(frames.index(int(m[2])) + 1)


def test_answers_match_the_recorded_digits(dataset):
    _, labels = _load_digits()
    for split in IMAGE_SPLITS + VIDEO_SPLITS:
        for record in _lines(dataset, split):
            assert record["conversations"][1]["value"] == _recompute(record), record["id"]
            layout = record.get("grid", record.get("frames"))
            np.testing.assert_array_equal(labels[np.array(record["source"])], layout)


def test_questions_ask_only_about_indices_training_covers(dataset):
    for split in IMAGE_SPLITS + VIDEO_SPLITS:
        for record in _lines(dataset, split):
            asked = [v for k, v in record["ask"].items() if k in ("row", "col", "frame")]
            assert all(1 <= v <= MAX_INDEX for v in asked), record
            if record["qtype"] == "first_frame":
                assert int(record["conversations"][1]["value"]) <= MAX_INDEX
    # training grids reach every row and column index that any split asks about
    assert max(r for r, _ in TRAIN_GRIDS) == MAX_INDEX and max(c for _, c in TRAIN_GRIDS) == MAX_INDEX


# --- splits and sizes ------------------------------------------------------------------------------

def test_train_and_eval_use_disjoint_digit_images(dataset):
    def used(splits):
        return {int(i) for split in splits for record in _lines(dataset, split)
                for i in np.ravel(record["source"])}

    train = used(("train", "video_train"))
    evaluation = used(IMAGE_SPLITS[1:] + VIDEO_SPLITS[1:])
    assert train and evaluation and not train & evaluation


def _tiles_at_full_resolution(size: tuple[int, int]) -> int:
    """Tiles of the smallest anyres grid that shows the image without downscaling it."""
    rows, cols = select_grid(size, TILE_PX, max_tiles=64)
    return rows * cols


def test_training_images_fit_four_tiles_high_ones_need_sixteen_and_huge_ones_64(dataset):
    for split in ("train", "eval_low"):
        for record in _lines(dataset, split):
            width, height = _size(dataset, record)
            assert math.ceil(width / TILE_PX) * math.ceil(height / TILE_PX) <= 4
            rows, cols = select_grid((width, height), TILE_PX, max_tiles=4)
            # pages are whole tiles, so anyres shows them unscaled: one 16 px cell per encoder patch
            assert (rows * TILE_PX, cols * TILE_PX) == (height, width), (record["id"], width, height)
    for record in _lines(dataset, "eval_high"):
        assert _tiles_at_full_resolution(_size(dataset, record)) == 16, record["id"]
    for record in _lines(dataset, "eval_huge"):
        assert _tiles_at_full_resolution(_size(dataset, record)) == 64, record["id"]


def test_video_frames_are_one_tile_and_clip_lengths_follow_the_split(dataset):
    lengths = {"video_train": (2, 8), "video_eval_low": (2, 8), "video_eval_high": (32, 32),
               "video_eval_huge": (128, 128)}
    for split, (low, high) in lengths.items():
        for record in _lines(dataset, split):
            assert low <= len(record["frames"]) <= high
            assert load_image(_frame_files(dataset, record)[-1]).size == (TILE_PX, TILE_PX)


def test_meta_counts_match_the_files(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["seed"] == 3
    for split in IMAGE_SPLITS + VIDEO_SPLITS:
        records = _lines(dataset, split)
        assert meta["counts"][split] == len(records)
        qtypes = {}
        for record in records:
            qtypes[record["qtype"]] = qtypes.get(record["qtype"], 0) + 1
        assert meta["qtypes"][split] == qtypes
    assert meta["pools"]["train"] + meta["pools"]["eval"] == 1797
    assert "1..8" in meta["asked_indices"]


# --- determinism and the output folder --------------------------------------------------------------

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(dataset, tmp_path):
    make_digits_dataset(tmp_path / "again", seed=3, progress=False, **SIZES)
    assert _tree(tmp_path / "again") == _tree(dataset)
    make_digits_dataset(tmp_path / "other", seed=4, progress=False, **SIZES)
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (dataset / "train.jsonl").read_bytes()


def test_eval_sets_do_not_depend_on_the_train_sizes(dataset, tmp_path):
    make_digits_dataset(tmp_path / "more", seed=3, progress=False, **{**SIZES, "train_images": 5})
    for split in ("eval_low", "eval_high", "eval_huge", "video_eval_high", "video_eval_huge"):
        assert (tmp_path / "more" / f"{split}.jsonl").read_bytes() == (dataset / f"{split}.jsonl").read_bytes()


TINY = {"train_images": 2, "eval_images": 1, "train_videos": 1, "eval_videos": 1, "progress": False}


def test_refuses_an_existing_folder_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists.*--force"):
        make_digits_dataset(out, seed=0, **TINY)
    assert (out / "keep.txt").exists()
    make_digits_dataset(out, seed=0, force=True, **TINY)
    assert not (out / "keep.txt").exists() and (out / "meta.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .tmp- / .old- folders left


def test_bad_settings_are_reported_together(tmp_path):
    with pytest.raises(DataError) as e:
        make_digits_dataset(tmp_path / "out", seed=0, train_images=-1, high_frames=4, huge_frames=8,
                            eval_fraction=1.5)
    assert "train_images=-1" in str(e.value) and "high_frames=4" in str(e.value) and "huge_frames=8" in str(e.value)
    assert "eval_fraction=1.5" in str(e.value)
    assert not (tmp_path / "out").exists()


# --- CLI ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["digits", "--help"]])
def test_cli_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli_data.main(argv)
    assert e.value.code == 0
    assert "usage: hybrid-data" in capsys.readouterr().out


def test_cli_writes_then_refuses_without_force(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["digits", str(out), "--train-images", "2", "--eval-images", "1", "--train-videos", "1",
            "--eval-videos", "1", "--high-frames", "9", "--huge-frames", "12"]
    assert run_cli(cli_data.main, argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(_lines(out, "video_eval_high")[0]["frames"]) == 9
    assert len(_lines(out, "video_eval_huge")[0]["frames"]) == 12
    assert run_cli(cli_data.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DataError:") and "already exists" in err and len(err.splitlines()) == 1


def test_blind_share_is_the_share_of_cells_holding_the_answer(dataset):
    grid = {"qtype": "digit_at", "grid": [[7, 1], [7, 3]], "conversations": [{}, {"value": "7"}]}
    clip = {"qtype": "frame_digit", "frames": [2, 5, 5, 5, 0], "conversations": [{}, {"value": "5"}]}
    assert blind_share(grid) == 0.5 and blind_share(clip) == 0.6
    assert blind_share({"qtype": "count", "grid": [[1]], "conversations": [{}, {"value": "1"}]}) is None
    for split in ("eval_low", "video_eval_high"):
        for record in _lines(dataset, split):
            share = blind_share(record)
            assert (share is None) == (record["qtype"] not in ("digit_at", "frame_digit"))
            assert share is None or 0 < share <= 1  # the answer is always one of the cells / frames
