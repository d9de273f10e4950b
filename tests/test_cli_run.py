"""hybrid-run from a shipped config: answers, streams, and refuses bad input in one line."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def _run(*args):
    return subprocess.run([sys.executable, "-m", "hybrid_mllm.runtime.cli_run", *args], capture_output=True, text=True,
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
    (["--max-tiles", "0"], "--max-tiles must be >= 1, got 0"),
    (["--prefill-chunk", "0"], "--prefill-chunk must be >= 1, got 0"),
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


def _pipeline(max_visual_tokens=None):
    from hybrid_mllm.core.build import build_mllm
    from hybrid_mllm.core.config import load_config
    from hybrid_mllm.core.presets import resolve_config_path
    from hybrid_mllm.runtime.pipeline import Pipeline

    config = load_config(resolve_config_path("mllm-tiny"))
    config.text.max_visual_tokens = max_visual_tokens
    model, tokenizer = build_mllm(config, seed=0)
    return Pipeline(model.eval(), tokenizer, config)


def test_visual_token_cap_names_the_count_the_limit_and_the_fix(image):
    from hybrid_mllm.core.errors import ResourceError
    from hybrid_mllm.runtime.pipeline import Overrides, Request

    pipeline = _pipeline()
    request = [Request("x", images=[image])]
    count = lambda tiles: pipeline.prepare(request, Overrides(max_tiles=tiles))[0].n_visual[0]  # noqa: E731
    at_9, at_2 = count(9), count(2)
    assert at_9 > at_2 > count(1)
    with pytest.raises(ResourceError) as info:
        pipeline.prepare(request, Overrides(max_tiles=9, max_visual_tokens=at_2))
    largest = max(t for t in range(1, 9) if count(t) <= at_2)
    assert str(info.value) == (f"the request has {at_9:,} visual tokens, more than the limit of {at_2:,} "
                               f"(--max-visual-tokens): use --max-tiles {largest} ({count(largest):,} tokens)")
    pipeline.prepare(request, Overrides(max_tiles=2, max_visual_tokens=at_2))  # at the cap: accepted
    with pytest.raises(ResourceError, match=r"\(text.max_visual_tokens\): even one tile per image and one frame"):
        _pipeline(max_visual_tokens=5).prepare(request)


def test_zero_visual_token_cap_is_a_limit_not_unset(image):
    from hybrid_mllm.core.errors import ResourceError
    from hybrid_mllm.runtime.pipeline import Overrides, Request

    with pytest.raises(ResourceError, match=r"more than the limit of 0 \(--max-visual-tokens\)"):
        _pipeline(max_visual_tokens=10**6).prepare([Request("x", images=[image])], Overrides(max_visual_tokens=0))


def test_prefill_chunk_is_refused_with_trt(tmp_path, capsys):
    from hybrid_mllm.core.cli import run_cli
    from hybrid_mllm.runtime.cli_run import main

    assert run_cli(main, ["--trt", str(tmp_path), "--prompt", "x", "--prefill-chunk", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: HybridError: --prefill-chunk is not for --trt: the engine prefills in chunks of "
                          "the --max-seq it was built with") and err.count("\n") == 1, err


def test_visual_token_cap_on_the_command_line(image, capsys):
    from hybrid_mllm.core.cli import run_cli
    from hybrid_mllm.runtime.cli_run import main

    argv = ["--config", "mllm-tiny", "--image", image, "--prompt", "x", "--max-tiles", "9", "--max-visual-tokens", "20"]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ResourceError: the request has ") and "more than the limit of 20" in err
    assert err.count("\n") == 1, err


def test_prefill_refused_when_memory_is_short(image, monkeypatch):
    import hybrid_mllm.runtime.memory as memory
    from hybrid_mllm.core.errors import ResourceError
    from hybrid_mllm.runtime.generate import GenerationConfig
    from hybrid_mllm.runtime.pipeline import Request

    pipeline = _pipeline()
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10**6)  # 1 MB free
    with pytest.raises(ResourceError, match=r"^prefilling 1 x [\d,]+ tokens needs about .* GiB is free: use "
                                            r"--prefill-chunk \d+$"):
        pipeline.answer([Request("x", images=[image])], GenerationConfig(max_new_tokens=1))
