"""Property tests (hypothesis): the config loader, anyres arithmetic and frame sampling.

Config: any valid document round-trips through save/load unchanged; any value put anywhere
gives a `Config` or a `ConfigError`, never another exception. Anyres: grids respect their
limits, tiles and content boxes are never empty, and `num_visual_tokens` (what a prompt's
length is checked with) equals the tokens the real model makes. Frames: sampled indices are
ascending, unique and in range for any length, rate and limits.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hybrid_mllm.core.config import load_config, parse_config, save_config
from hybrid_mllm.core.errors import ConfigError
from hybrid_mllm.core.vision import anyres_tiles, num_visual_tokens, select_grid
from hybrid_mllm.core.vision.video import sample_times, sequence_indices
from hybrid_mllm.runtime.splice import encode_image

SMALL = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- config ----------------------------------------------------------------------------------------

@st.composite
def valid_configs(draw) -> dict:
    n_head = draw(st.sampled_from([1, 2, 4]))
    n_layer = draw(st.integers(1, 4))
    model = {
        "vocab_size": draw(st.integers(1, 300)),
        "d_model": n_head * draw(st.integers(1, 8)),
        "n_layer": n_layer,
        "layers": draw(st.lists(st.sampled_from(["mamba", "attention"]), min_size=n_layer, max_size=n_layer)),
        "ffn_layers": draw(st.lists(st.sampled_from(["mlp", "moe", "none"]), min_size=n_layer, max_size=n_layer)),
        "mixers": {"mamba": {"d_state": draw(st.integers(1, 16)), "expand": draw(st.integers(1, 3))},
                   "attention": {"n_head": n_head, "n_kv_head": draw(st.sampled_from([d for d in (1, 2, 4)
                                                                                       if n_head % d == 0]))}},
        "moe": {"n_experts": 4, "top_k": draw(st.integers(1, 4))},
        "norm_eps": draw(st.floats(1e-8, 1e-3)),
        "tie_embeddings": draw(st.booleans()),
    }
    raw = {"name": draw(st.text("abcxyz-", min_size=1, max_size=8)), "model": model}
    if draw(st.booleans()):
        raw["text"] = {"template": draw(st.sampled_from(["plain", "chatml", "vicuna"])),
                       "max_context": draw(st.integers(1, 10**6))}
    return raw


@SMALL
@given(raw=valid_configs())
def test_valid_configs_round_trip(raw, tmp_path):
    config = parse_config(raw)
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

PATHS = [("name",), ("model",), ("model", "vocab_size"), ("model", "d_model"), ("model", "n_layer"),
         ("model", "layers"), ("model", "layers", 0), ("model", "ffn_layers"), ("model", "mixers"),
         ("model", "mixers", "mamba"), ("model", "mixers", "mamba", "d_state"), ("model", "attn_layer_period"),
         ("model", "attn_mixer"), ("model", "moe", "top_k"), ("model", "norm_eps"), ("text",), ("text", "template"),
         ("text", "tokenizer"), ("text", "max_context"), ("vision",), ("vision", "encoder"),
         ("vision", "encoder", "name"), ("vision", "max_tiles"), ("vision", "pinpoints"), ("vision", "fps"),
         ("vision", "connector"), ("train",)]
VISION = {"encoder": {"name": "tiny", "image_size": 16, "patch_size": 8, "width": 16}}


def _put(raw: dict, path: tuple, value) -> dict:
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


@SMALL
@given(raw=valid_configs(), path=st.sampled_from(PATHS), value=YAML_VALUES)
def test_any_value_anywhere_is_a_config_or_a_config_error(raw, path, value):
    raw = _put({**raw, "vision": dict(VISION, encoder=dict(VISION["encoder"])), "text": {}}, path, value)
    try:
        parse_config(raw)
    except ConfigError:
        pass


@SMALL
@given(document=YAML_VALUES)
def test_any_yaml_document_is_a_config_or_a_config_error(document, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_config(path)
    except ConfigError:
        pass


# --- anyres ----------------------------------------------------------------------------------------

SIZES = st.tuples(st.integers(1, 400), st.integers(1, 400))


@SMALL
@given(size=SIZES, tile=st.sampled_from([8, 14, 16, 32, 336]), max_tiles=st.integers(1, 12))
def test_best_grid_respects_the_limit(size, tile, max_tiles):
    rows, cols = select_grid(size, tile, max_tiles=max_tiles)
    assert rows >= 1 and cols >= 1 and rows * cols <= max_tiles


@SMALL
@given(size=SIZES, tile=st.sampled_from([8, 16, 24]), max_tiles=st.integers(1, 9))
def test_tiles_cover_the_grid_and_content_is_never_empty(size, tile, max_tiles):
    grid = select_grid(size, tile, max_tiles=max_tiles)
    tiles = anyres_tiles(Image.new("RGB", size, (90, 20, 200)), tile, grid, mean=(0.5,) * 3, std=(0.5,) * 3)
    rows, cols = tiles.grid
    top, left, height, width = tiles.content
    assert tiles.grid == grid and tuple(tiles.pixels.shape) == (1 + rows * cols, 3, tile, tile)
    assert height >= 1 and width >= 1 and top >= 0 and left >= 0
    assert top + height <= rows * tile and left + width <= cols * tile
    assert height == rows * tile or width == cols * tile  # the image touches two sides of the canvas


@functools.cache
def _model(connector: str, newline: bool):
    from hybrid_mllm.core.build import build_mllm
    from hybrid_mllm.runtime.visual_inputs import VisualLoader

    connectors = {"mlp": {"name": "mlp2x_gelu"}, "pool": {"name": "pool", "stride": 2},
                  "pool3": {"name": "pool", "stride": 3}}
    raw = {"model": {"vocab_size": 263, "d_model": 16, "n_layer": 1, "layers": ["mamba"]},
           "vision": {"encoder": {"name": "tiny", "image_size": 24, "patch_size": 8, "width": 8},
                      "connector": connectors[connector], "newline": newline}}
    config = parse_config(raw)
    model, _ = build_mllm(config, seed=0)
    return model.eval(), VisualLoader(model, config.vision)


@SMALL
@given(size=SIZES, max_tiles=st.integers(1, 6), connector=st.sampled_from(["mlp", "pool", "pool3"]),
       newline=st.booleans())
def test_token_count_matches_the_model(size, max_tiles, connector, newline):
    import torch

    from hybrid_mllm.runtime.visual_inputs import Overrides

    model, loader = _model(connector, newline)
    image = Image.new("RGB", size, (10, 200, 30))
    [tiles], predicted = loader.load([model.image_token_id], [image], [], Overrides(max_tiles=max_tiles))
    with torch.no_grad():
        assert encode_image(model, tiles).shape[0] == predicted
    grid = model.connector.out_grid(model.encoder.grid)
    assert num_visual_tokens(size, 24, grid, max_tiles=max_tiles, newline=newline) == predicted


# --- frame sampling --------------------------------------------------------------------------------

FPS = st.none() | st.floats(0.05, 30)
MAX_FRAMES = st.none() | st.integers(1, 64)


@SMALL
@given(n=st.integers(1, 500), rate=st.fractions(Fraction(1, 2), Fraction(120)), max_frames=MAX_FRAMES, fps=FPS)
def test_sampled_frames_are_sorted_unique_and_in_range(n, rate, max_frames, fps):
    indices = sequence_indices(n, rate, max_frames, fps)
    assert indices == sorted(set(indices)) and indices and 0 <= indices[0] and indices[-1] < n
    if max_frames is not None:
        assert len(indices) <= max_frames
    if fps is None and (max_frames is None or max_frames >= n):
        assert indices == list(range(n))  # asked for as many frames as exist: every one


@SMALL
@given(duration=st.fractions(Fraction(1, 100), Fraction(1000)), max_frames=MAX_FRAMES, fps=FPS)
def test_sample_times_lie_in_the_clip(duration, max_frames, fps):
    times = sample_times(duration, max_frames, fps)
    if max_frames is None and fps is None:
        assert times is None
        return
    assert times == sorted(times) and len(set(times)) == len(times) and 0 <= times[0] and times[-1] < duration
    assert len(times) <= (max_frames or len(times))


@pytest.mark.parametrize("max_frames", [1, 7])
def test_one_frame_sequence(max_frames):
    assert sequence_indices(1, Fraction(1), max_frames, None) == [0]
