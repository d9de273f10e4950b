"""hybrid-run from a shipped config: answers, streams, and refuses bad input in one line."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def _run(*args):
    return subprocess.run([sys.executable, "-m", "hybrid_mllm.export.cli_run", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_answers_with_verbose_counts(image):
    r = _run("--config", "mllm-tiny", "--image", image, "--prompt", "What is shown?", "--max-new-tokens", "4",
             "--max-tiles", "9", "-v")
    assert r.returncode == 0, r.stderr
    assert "visual): prefill" in r.stderr and "new tokens" in r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "/no/such.png"], "ImageError: /no/such.png: no such file"),
    (["--video", "/no/such.mp4"], "VideoError"),
    (["--max-tiles", "0"], "--max-tiles and --max-frames must be >= 1"),
])
def test_bad_input_one_line_no_traceback(args, message):
    r = _run("--config", "mllm-tiny", "--prompt", "x", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_image_to_a_text_only_model(image):
    r = _run("--config", "hybrid-tiny", "--prompt", "x", "--image", image)
    assert r.returncode == 2 and "no vision encoder" in r.stderr


def test_prompt_longer_than_context(tmp_path, image):
    config = tmp_path / "c.yaml"
    text = open(__import__("hybrid_mllm.core.presets", fromlist=["x"]).PRESET_DIR / "mllm-tiny.yaml").read()
    config.write_text(text.replace("max_context: 200000", "max_context: 40"))
    r = _run("--config", str(config), "--prompt", "x", "--image", image)
    assert r.returncode == 2 and "but the model's context is 40" in r.stderr, r.stderr
