"""The bad-input corpus: every way a user can hand us a broken file, driven through the CLIs.

Each `Case` writes its input under a fresh folder (``{tmp}`` in its command line), runs the
command in-process through its console-script ``main`` (as `run_cli` does), and must end
with exit code 2 and exactly one line on stderr that names the input (`names`) and the
problem (`expect`), without a traceback. Cases with ``expect=None`` are awkward but valid
inputs that must work. ``scripts/gen_bad_input_docs.py`` writes docs/bad-inputs.md from
this same list.
"""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import _bad_files as bf
import pytest

from hybrid_mllm.core.cli import run_cli
from hybrid_mllm.core.registry import AUTOLOAD_ENV, set_registry

COMMANDS = {
    "hybrid-model": "hybrid_mllm.runtime.cli_model",
    "hybrid-plugins": "hybrid_mllm.core.cli_plugins",
    "hybrid-run": "hybrid_mllm.runtime.cli_run",
    "hybrid-train": "hybrid_mllm.train.cli_train",
    "hybrid-eval": "hybrid_mllm.train.cli_eval",
}


def _nothing(root: Path) -> None:
    """No setup: the input is missing, or given on the command line."""


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path], None]  # writes the input under the case's folder
    argv: tuple[str, ...]  # the command line; "{tmp}" is the case's folder
    expect: str | None  # the problem, as the one-line error says it; None: the command must succeed
    names: str = ""  # the input the error names (file, key or line)
    input: str = ""  # what the input is, for the docs


MODEL = ("hybrid-model", "{tmp}/c.yaml", "--seq-len", "4", "--new-tokens", "0")
TRAIN = ("hybrid-train", "{tmp}/c.yaml")
RUN = ("hybrid-run", "--config", "mllm-tiny", "--max-new-tokens", "1", "--prompt", "x")
RUN_CKPT = ("hybrid-run", "--checkpoint", "{tmp}/ckpt", "--max-new-tokens", "1", "--prompt", "x")
EVAL = ("hybrid-eval", "{tmp}/ckpt", "{tmp}/d.jsonl", "--max-new-tokens", "1")
PLUGINS = ("hybrid-plugins",)
M = "model: {vocab_size: 263, d_model: 32, n_layer: 2, layers: [mamba, attention]"


def _yaml(name, content, expect, names, what):
    return Case(name, bf.text("c.yaml", content), MODEL, expect, names, what)


M2 = M.replace("[mamba,", "[mamba2,")  # d_inner 64 with the default expand 2
P = "model: {vocab_size: 263, d_model: 32, mixers: {mamba2: {headdim: 16}}, "  # a layer_pattern follows
MAMBA2_BAD = [  # (case, options, the problem, what the input is)
    ("headdim", "headdim: 48", "headdim 48 must divide d_inner = expand * d_model = 64; use one of 64, 32",
     "a Mamba-2 headdim that does not divide d_inner"),
    ("ngroups", "headdim: 16, ngroups: 3", "ngroups 3 must divide nheads = d_inner / headdim = 4; use one of 4, 2, 1",
     "Mamba-2 groups that do not divide the heads"),
    ("d-state", "d_state: 0", "d_state must be >= 1, got 0", "a Mamba-2 d_state of 0"),
    ("dt-limit", "dt_limit: [0.1, 0.01]", "dt_limit must be [low, high] with 0 <= low < high, got [0.1, 0.01]",
     "a Mamba-2 dt_limit with low > high"),
    ("impl", "impl: chunkd", "impl: unknown ssd kernel 'chunkd'. Did you mean 'chunked'?",
     "a misspelt Mamba-2 kernel"),
]


YAML_CASES = [
    _yaml("yaml-empty", "", "the file is empty", "c.yaml", "an empty file"),
    _yaml("yaml-comments-only", "# nothing here\n", "the file is empty", "c.yaml", "only comments"),
    _yaml("yaml-syntax-error", "model: [1, 2\n", "YAML syntax error at line 2", "c.yaml", "an unclosed bracket"),
    _yaml("yaml-tab-indent", "model:\n\tvocab_size: 8\n", "YAML syntax error at line 2", "c.yaml",
          "a tab used for indentation"),
    _yaml("yaml-not-a-mapping", "- 1\n- 2\n", "expected a mapping with a 'model:' section", "c.yaml",
          "a list instead of a mapping"),
    _yaml("yaml-wrong-type", M.replace("d_model: 32", "d_model: big") + "}\n", "expected int, got str 'big'",
          "model.d_model", "a string where an int goes"),
    _yaml("yaml-float-for-int", M.replace("n_layer: 2", "n_layer: 2.5") + "}\n", "expected int, got float 2.5",
          "model.n_layer", "a float where an int goes"),
    _yaml("yaml-negative-size", M.replace("d_model: 32", "d_model: -32") + "}\n", "must be >= 1, got -32",
          "model.d_model", "a negative width"),
    _yaml("yaml-zero-layers", M.replace("n_layer: 2", "n_layer: 0") + "}\n", "must be >= 1, got 0",
          "model.n_layer", "zero layers"),
    _yaml("yaml-huge-layer-count", M.replace("n_layer: 2", "n_layer: 3000000000") + "}\n",
          "must be <= 10,000, got 3,000,000,000", "model.n_layer", "n_layer: 3000000000 (a typo)"),
    _yaml("yaml-negative-option", M + ", mixers: {mamba: {d_state: -4}}}\n", "d_state must be >= 1, got -4",
          "model.mixers.mamba", "a negative mixer option"),
    *[_yaml(f"yaml-mamba2-{name}", M2 + f", mixers: {{mamba2: {{{options}}}}}}}\n", expect, "model.mixers.mamba2", what)
      for name, options, expect, what in MAMBA2_BAD],
    _yaml("yaml-alias-bomb", bf.BILLION_LAUGHS, "expands to more than 1,000,000 values", "c.yaml",
          "a 'billion laughs' alias bomb (600 bytes, 387M values)"),
    _yaml("yaml-python-tag", "model: !!python/object/apply:os.system [echo pwned]\n", "YAML tag not allowed",
          "line 1", "a !!python/object tag"),
    _yaml("yaml-duplicate-key", bf.MODEL + "model: {vocab_size: 8}\n", "key 'model' is given twice", "line 2",
          "the same key twice"),
    _yaml("yaml-unknown-key", M + ", norm_epsilon: 1.0e-5}\n", "unknown key. Did you mean 'norm_eps'?",
          "model.norm_epsilon", "a misspelt option"),
    _yaml("yaml-unknown-section", bf.MODEL + "modle: {}\n", "unknown section", "modle", "an unknown top-level key"),
    _yaml("yaml-unknown-mixer", M.replace("attention]", "atention]") + "}\n",
          "unknown mixer 'atention'. Did you mean 'attention'?", "model.layers[1]", "a misspelt mixer name"),
    _yaml("yaml-mamba2-ok", M2 + ", mixers: {mamba2: {d_state: 16, headdim: 16, ngroups: 2, dt_limit: [0.0, .inf]}}}\n",
          None, "", "a valid Mamba-2 block"),
    _yaml("yaml-layer-pattern-symbol", P + 'layer_pattern: "M-X*"}\n',
          "unknown symbol 'X' (valid: 'M' (mamba2), '*' (attention), '-' (mlp), 'E' (moe))",
          "model.layer_pattern[2]", "a layer pattern with an unknown symbol"),
    _yaml("yaml-layer-neither", M.replace("[mamba, attention]", "[mamba, none], ffn_layers: [mlp, none]") + "}\n",
          "a layer needs a mixer or an FFN, not none and none", "model.layers[1]", "a layer with no mixer and no FFN"),
    _yaml("yaml-layer-pattern-ok", P + 'layer_pattern: "M-*-", pattern_mlp: relu2_mlp}\n', None, "",
          "a valid Nemotron-H-style pattern"),
    _yaml("yaml-not-utf8", b"\xff\xfe\x00model: 1\n", "cannot read the file", "c.yaml", "bytes that are not UTF-8"),
    Case("yaml-missing-file", _nothing, MODEL, "file not found", "c.yaml", "a path to nothing"),
    Case("yaml-vision-zero-tiles", bf.tiny_config_with("c.yaml", "max_tiles: 4", "max_tiles: 0"), MODEL,
         "must be > 0, got 0", "vision.max_tiles", "vision.max_tiles: 0"),
    Case("yaml-vision-negative-frames", bf.tiny_config_with("c.yaml", "max_frames: 8", "max_frames: -3"), MODEL,
         "must be > 0, got -3", "vision.max_frames", "vision.max_frames: -3"),
    Case("yaml-train-wrong-type", bf.train_config("c.yaml", steps="ten"), TRAIN, "expected int, got str 'ten'",
         "train.stages[0].steps", "a string for a stage's steps"),
    Case("yaml-train-negative", bf.train_config("c.yaml", batch_size=-2), TRAIN, "must be >= 1, got -2",
         "train.stages[0].batch_size", "a negative batch size"),
    Case("yaml-train-syntax-error", bf.text("c.yaml", bf.MODEL + "train: [\n"), TRAIN, "YAML syntax error at line 3",
         "c.yaml", "a training config with a syntax error"),
    Case("train-vision-stage-text-only-data", bf.vision_train_config("c.yaml", [bf.RECORD({"id": "t"})], ["connector"]), TRAIN,
         "trains only ['connector'], but its data", "stage 'align'", "a connector-only stage on text-only data"),
    Case("yaml-train-bad-override", bf.train_config("c.yaml"), (*TRAIN, "train.stages.first.steps=5"),
         "is a list: give an item number, not 'first'", "train.stages.first.steps=5", "key=value on a list by name"),
]


def _image(name, setup, file, expect, names, what, run=RUN):
    return Case(name, setup, (*run, "--image", f"{{tmp}}/{file}"), expect, names, what)


IMAGE_CASES = [
    _image("image-empty-file", bf.text("e.png", b""), "e.png", "not an image", "e.png", "a 0-byte .png"),
    _image("image-truncated-png", bf.truncated("t.png", "PNG"), "t.png", "cannot decode the image data", "t.png",
           "the first half of a PNG"),
    _image("image-truncated-jpeg", bf.truncated("t.jpg", "JPEG"), "t.jpg", "cannot decode the image data", "t.jpg",
           "the first half of a JPEG"),
    _image("image-text-named-png", bf.text("notes.png", "just some text\n" * 10), "notes.png", "not an image",
           "notes.png", "a text file named .png"),
    _image("image-decompression-bomb", bf.text("bomb.png", bf.png_header_only(100_000, 100_000)), "bomb.png",
           "too many pixels", "bomb.png", "a 57-byte PNG claiming 100000 x 100000 pixels"),
    _image("image-over-pixel-limit", bf.both(bf.tiny_config_with("c.yaml", "max_frames: 8", "max_frames: 8\n  "
                                                                  "max_pixels: 1000"),
                                              bf.image("big.png", lambda: bf.noise(64, 64))),
           "big.png", "4,096 pixels is more than the limit of 1,000", "big.png",
           "a 64 x 64 image over vision.max_pixels: 1000",
           run=("hybrid-run", "--config", "{tmp}/c.yaml", "--max-new-tokens", "1", "--prompt", "x")),
    _image("image-missing", _nothing, "nope.png", "no such file", "nope.png", "a path to nothing"),
    _image("image-folder", lambda root: (root / "photos").mkdir(), "photos", "is a folder", "photos",
           "a folder instead of an image"),
] + [
    _image(f"image-{key}", bf.image(file, factory), file, None, file, f"{size[0]} x {size[1]} {key} image")
    for key, (file, factory, size) in bf.VALID_IMAGES.items()
]


def _video(name, setup, file, expect, names, what):
    return Case(name, setup, (*RUN, "--video", f"{{tmp}}/{file}"), expect, names, what)


VIDEO_CASES = [
    _video("video-random-bytes", bf.random_bytes("r.mp4", 4096), "r.mp4", "not a video FFmpeg can read", "r.mp4",
           "4 KiB of random bytes named .mp4"),
    _video("video-empty-file", bf.text("e.mp4", b""), "e.mp4", "not a video FFmpeg can read", "e.mp4",
           "a 0-byte .mp4"),
    _video("video-zero-frames", bf.zero_frame_video("z.mkv"), "z.mkv", "no decodable frames", "z.mkv",
           "a video header with no frames"),
    _video("video-unknown-codec", bf.unknown_codec_video("c.mkv"), "c.mkv", "video codec is not one FFmpeg can decode",
           "c.mkv", "a Matroska file with an unknown codec id"),
    _video("video-audio-only", bf.audio_only("a.wav"), "a.wav", "has no video stream", "a.wav", "a WAV sound file"),
    _video("video-empty-folder", bf.frames_folder("frames", []), "frames", "no image files", "frames",
           "an empty frames folder"),
    _video("video-mixed-frame-sizes", bf.frames_folder("frames", [(32, 32), (48, 32)]), "frames",
           "all frames must be the same size", "frame1.png", "frames of two sizes"),
    _video("video-missing", _nothing, "nope.mp4", "no such file or folder", "nope.mp4", "a path to nothing"),
    _video("video-valid-mkv", bf.valid_video("ok.mkv"), "ok.mkv", None, "ok.mkv", "a 3-frame MPEG-4 video"),
]


def _ckpt(name, change, expect, names, what):
    return Case(name, bf.broken_checkpoint(change), RUN_CKPT, expect, names, what)


CHECKPOINT_CASES = [
    _ckpt("checkpoint-truncated", bf.truncate_weights, "is not a readable safetensors file", "model.safetensors",
          "model.safetensors cut in half"),
    _ckpt("checkpoint-integer-weights", bf.retype_weights, "wrong dtype", "connector.fc1.bias int32", "every tensor stored as int32"),
    _ckpt("checkpoint-missing-tensors", bf.drop_tensors, "missing: connector.", "ckpt",
          "the connector's tensors left out"),
    _ckpt("checkpoint-pickle", bf.pickle_weights, "is not a readable safetensors file", "model.safetensors",
          "a pickle renamed to model.safetensors"),
    _ckpt("checkpoint-other-architecture", bf.other_architecture, "does not fit the model", "ckpt",
          "the hybrid-tiny config over mllm-tiny weights"),
    _ckpt("checkpoint-hf-directory", bf.hf_config_only, "has no config.yaml", "ckpt",
          "a Hugging Face config.json instead of config.yaml"),
    _ckpt("checkpoint-bad-config", lambda ckpt: (ckpt / "config.yaml").write_text("model: [\n"),
          "YAML syntax error", "config.yaml", "a config.yaml with a syntax error"),
    _ckpt("checkpoint-missing-shard", lambda ckpt: (ckpt / "model.safetensors.index.json").write_text(
              '{"weight_map": {"lm.embed.weight": "model-00001-of-00002.safetensors"}}'),
          "missing shard(s) model-00001-of-00002.safetensors", "ckpt", "an index naming a shard that is not there"),
    Case("checkpoint-missing-directory", _nothing, RUN_CKPT, "no such checkpoint directory", "ckpt",
         "a path to nothing"),
]


def _data(name, lines, expect, names, what, argv=EVAL):
    return Case(name, bf.dataset(lines), argv, expect, names, what)


R = bf.RECORD
DATA_CASES = [
    _data("data-bad-json-line", [bf.GOOD_RECORD, bf.GOOD_RECORD, "{not json\n"], "not valid JSON", "d.jsonl:3",
          "line 3 is not JSON"),
    _data("data-path-escapes-root", [R({}, image="../img.png")], "leaves the data root", "d.jsonl:1",
          "an image path with .."),
    _data("data-absolute-path", [R({}, image="/etc/passwd")], "absolute path '/etc/passwd'", "d.jsonl:1",
          "an absolute image path"),
    _data("data-missing-image", [bf.GOOD_RECORD, R({}, image="nope.png")], "image 'nope.png' does not exist",
          "d.jsonl:2", "an image file that is not there"),
    _data("data-no-assistant-turn", ['{"conversations": [{"from": "human", "value": "hi"}]}\n'],
          "no assistant ('gpt') turn", "d.jsonl:1", "a conversation without an answer"),
    _data("data-image-tag-without-image", [R({}).replace("What colour", "<image> What colour")],
          "1 <image> and 0 <video> tag(s) but 0 image(s)", "d.jsonl:1", "an <image> tag but no image"),
    _data("data-image-without-tag", [R({"image": "img.png"})], "0 <image> and 0 <video> tag(s) but 1 image(s)",
          "d.jsonl:1", "an image but no <image> tag"),
    _data("data-empty-file", [], "no records", "d.jsonl", "an empty data file"),
    _data("data-not-an-object", ["[1, 2]\n"], "a record must be a JSON object", "d.jsonl:1",
          "a JSON array of numbers"),
    _data("data-answer-before-question", [('{"conversations": [{"from": "gpt", "value": "red"}, '
                                           '{"from": "human", "value": "What colour?"}]}\n')],
          "no human turn followed by a gpt answer", "line 1", "the answer before the question"),
    _data("data-json-array", ["[" + bf.GOOD_RECORD.strip() + "]\n"], None, "d.jsonl",
          "a JSON array file (not JSONL)"),
]


def _prompt(name, prompt, expect, names, what, setup=_nothing, extra=(), config="mllm-tiny"):
    argv = ("hybrid-run", "--config", config, "--max-new-tokens", "1", "--prompt", prompt, *extra)
    return Case(name, setup, argv, expect, names, what)


PROMPT_CASES = [
    _prompt("prompt-empty", "", "is empty: give the prompt some text", "message 0", "--prompt ''"),
    _prompt("prompt-blank", "  \n ", "is empty: give the prompt some text", "message 0", "a prompt of spaces"),
    _prompt("prompt-longer-than-context", "x" * 300, "but the model's context is 64", "prompt", "300 characters, "
            "context 64", setup=bf.tiny_config_with("c.yaml", "max_context: 200000", "max_context: 64"),
            config="{tmp}/c.yaml"),
    _prompt("prompt-literal-image-tag", "What does <image> mean in HTML?", "has 1 <image>", "prompt",
            "a literal <image> and no image: refused, no visual slot is made"),
    _prompt("prompt-more-tags-than-images", "<image> or <image>?", "has 2 <image>", "prompt",
            "two <image> tags, one image", setup=bf.image("a.png", lambda: bf.noise(8, 8)),
            extra=("--image", "{tmp}/a.png")),
    _prompt("prompt-image-for-text-model", "x", "has no vision encoder", "model", "an image for a text-only model",
            setup=bf.image("a.png", lambda: bf.noise(8, 8)), extra=("--image", "{tmp}/a.png"), config="hybrid-tiny"),
]


def _plugin(name, module, source, expect, names, what):
    return Case(name, bf.plugin(module, source), PLUGINS, expect, names, what)


PLUGIN_CASES = [
    _plugin("plugin-import-error", "bad_import_plugin", "raise ImportError('needs torch 9')\n",
            "fails to import: ImportError: needs torch 9", "bad_import_plugin", "a plugin module that raises on import"),
    _plugin("plugin-syntax-error", "bad_syntax_plugin", "def register_mixers(:\n", "fails to import: SyntaxError",
            "bad_syntax_plugin", "a plugin module with a syntax error"),
    _plugin("plugin-duplicate-name", "dup_mixer_plugin", bf.DUPLICATE_MIXER,
            "mixer 'mamba' is registered twice: by hybrid-mllm and by dup-mixer-plugin", "dup-mixer-plugin",
            "a plugin registering the built-in name 'mamba'"),
    _plugin("plugin-hook-raises", "failing_hook_plugin", bf.FAILING_HOOK, "register_connectors raised KeyError",
            "failing-hook-plugin", "a plugin whose register hook raises"),
]

CASES = YAML_CASES + IMAGE_CASES + VIDEO_CASES + CHECKPOINT_CASES + DATA_CASES + PROMPT_CASES + PLUGIN_CASES


# --- running a case ------------------------------------------------------------------------------

class Outcome(NamedTuple):
    code: int
    stdout: str
    stderr: str


@contextmanager
def _isolated(root: Path):
    """Plugins installed under root/site are seen (autoload on) for the duration, then forgotten."""
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    saved_env = os.environ.pop(AUTOLOAD_ENV, None)
    if (root / "site").exists():
        sys.path.insert(0, str(root / "site"))
        importlib.invalidate_caches()
    set_registry(None)
    try:
        yield
    finally:
        set_registry(None)
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(root)):
                del sys.modules[name]
        if saved_env is not None:
            os.environ[AUTOLOAD_ENV] = saved_env


def run_case(case: Case, root: Path) -> Outcome:
    """Write the case's input under `root` and run its command in this process."""
    case.setup(root)
    argv = [arg.replace("{tmp}", str(root)) for arg in case.argv]
    main = importlib.import_module(COMMANDS[argv[0]]).main
    out, err = io.StringIO(), io.StringIO()
    with _isolated(root), redirect_stdout(out), redirect_stderr(err):
        try:
            code = run_cli(main, argv[1:])
        except SystemExit as e:  # argparse
            code = e.code
    return Outcome(code, out.getvalue(), err.getvalue())


def error_line(outcome: Outcome, root: Path) -> str:
    """The stderr of a case as the docs show it: the folder written as <tmp>."""
    return outcome.stderr.strip().replace(str(root), "<tmp>")


# --- tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr
    if case.expect is None:
        assert outcome.code == 0, outcome.stderr
        return
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert outcome.code == 2 and len(lines) == 1, outcome.stderr
    assert lines[0].startswith("error: ") and case.expect in lines[0] and case.names in lines[0], lines[0]


def test_corpus_is_large_and_names_are_unique():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) and len([c for c in CASES if c.expect]) >= 45


@pytest.mark.parametrize("key", bf.VALID_IMAGES)
def test_awkward_images_load_as_rgb(key, tmp_path):
    from hybrid_mllm.core.vision import load_image

    file, factory, size = bf.VALID_IMAGES[key]
    bf.image(file, factory)(tmp_path)
    loaded = load_image(tmp_path / file)
    assert loaded.mode == "RGB" and loaded.size == size


def test_console_script_in_a_subprocess(tmp_path):
    """An installed console script (its `entry`, sys.exit) behaves as the in-process runs."""
    case = next(c for c in CASES if c.name == "yaml-train-bad-override")
    case.setup(tmp_path)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in case.argv]
    script = Path(sys.executable).parent / argv[0]
    r = subprocess.run([str(script), *argv[1:]], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and case.expect in r.stderr, r.stderr


def test_docs_table_lists_every_case():
    docs = (Path(__file__).parents[1] / "docs" / "bad-inputs.md").read_text()
    missing = [case.name for case in CASES if f"`{case.name}`" not in docs]
    assert not missing, f"docs/bad-inputs.md lacks {missing}: run python scripts/gen_bad_input_docs.py"
