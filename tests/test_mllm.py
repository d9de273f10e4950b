"""The multimodal model and pipeline: token splicing, anyres at inference, video, batches, errors."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.config import load_config, parse_config
from hybrid_mllm.core.errors import HybridError, InputError
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.core.text import IGNORE_INDEX as IGNORE
from hybrid_mllm.core.vision import VideoClip, anyres_tiles, normalize, num_visual_tokens, select_grid
from hybrid_mllm.runtime.cue import grid_position
from hybrid_mllm.runtime.generate import GenerationConfig
from hybrid_mllm.runtime.pipeline import Overrides, Pipeline, Request
from hybrid_mllm.runtime.splice import embed, encode_image, encode_video


@pytest.fixture(scope="module")
def pipeline():
    config = load_config(resolve_config_path("mllm-tiny"))
    model, tokenizer = build_mllm(config, seed=0)
    return Pipeline(model.eval(), tokenizer, config)


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_image_tokens_match_the_declared_count(pipeline, image):
    model, enc = pipeline.model, pipeline.model.encoder
    img = Image.open(image).convert("RGB")
    for max_tiles in (1, 4, 16):
        grid = select_grid(img.size, 32, max_tiles=max_tiles)
        tokens = encode_image(model, anyres_tiles(img, 32, grid, mean=enc.mean, std=enc.std))
        assert tokens.shape[0] == num_visual_tokens(img.size, 32, enc.grid, max_tiles=max_tiles, newline=True)


def test_more_tiles_at_inference_give_more_tokens(pipeline, image):
    batches = [pipeline.prepare([Request("What?", images=[image])], Overrides(max_tiles=n))[0] for n in (4, 36)]
    assert batches[1].n_visual[0] > 4 * batches[0].n_visual[0] // 2


def test_splice_places_visual_tokens_at_the_placeholder_and_masks_labels(pipeline):
    model, tok = pipeline.model, pipeline.tokenizer
    ids = torch.tensor(tok.encode("ab<video>cd"))
    clip = VideoClip(torch.randn(3, 3, 32, 32))
    labels = ids.clone()
    batch = embed(model, [ids], [[clip]], [labels])
    n = batch.n_visual[0]
    assert n == 3 * (2 * 2 + 1)  # 3 frames x (pooled 2x2 tokens + a frame separator)
    assert batch.embeds.shape[1] == len(ids) - 1 + n
    assert (batch.labels[0, 2:2 + n] == IGNORE).all() and batch.labels[0, :2].tolist() == ids[:2].tolist()
    torch.testing.assert_close(batch.embeds[0, 2 + n - 1], model.frame_separator.detach())
    torch.testing.assert_close(batch.embeds[0, 0], model.lm.embed.weight[ids[0]].detach())


def test_grid_pos_marks_each_frame_with_a_cue_scaled_to_the_tokens():
    """grid_pos: identical frames get different tokens (a frame-number cue) whose size is
    CUE_STRENGTH of the tokens' own RMS, however large the connector's outputs are; the
    separator carries no cue; without grid_pos identical frames stay identical."""
    from hybrid_mllm.runtime.cue import CUE_STRENGTH

    config = load_config(resolve_config_path("mllm-tiny"))
    model, _ = build_mllm(config, seed=0)
    clip = VideoClip(torch.randn(1, 3, 32, 32).expand(8, -1, -1, -1))
    per_frame = encode_video(model, clip).shape[0] // 8
    frames = {}
    for grid_pos in (False, True):
        model.grid_pos = grid_pos
        with torch.no_grad():
            frames[grid_pos] = encode_video(model, clip).view(8, per_frame, -1)
    plain, cued = frames[False], frames[True]
    assert torch.allclose(plain[0], plain[5]) and not torch.allclose(cued[0], cued[5])
    torch.testing.assert_close(cued[:, -1], plain[:, -1])  # separators
    cue, tokens = cued[:, :-1] - plain[:, :-1], plain[:, :-1]
    ratio = float(cue.pow(2).mean().sqrt() / tokens.pow(2).mean().sqrt())
    assert abs(ratio - CUE_STRENGTH) < 0.15 * CUE_STRENGTH, ratio
    with torch.no_grad():
        model.video_connector.apply(lambda m: m.weight.mul_(100) if isinstance(m, torch.nn.Linear) else None)
        big = encode_video(model, clip).view(8, per_frame, -1)
    model.grid_pos = False
    with torch.no_grad():
        big_plain = encode_video(model, clip).view(8, per_frame, -1)
    big_ratio = float((big - big_plain)[:, :-1].pow(2).mean().sqrt() / big_plain[:, :-1].pow(2).mean().sqrt())
    assert abs(big_ratio - ratio) < 1e-3 * ratio  # the cue grows with the tokens


def test_placeholder_count_must_match_items(pipeline):
    ids = torch.tensor(pipeline.tokenizer.encode("<image><image>"))
    with pytest.raises(InputError, match="sample 0: 2 <image>/<video> placeholder"):
        embed(pipeline.model, [ids], [[]])


def test_batched_requests_answer_like_single_ones(pipeline, image):
    gen = GenerationConfig(max_new_tokens=6)
    requests = [Request("Describe the picture in detail.", images=[image]), Request("Hi")]
    batched, _ = pipeline.answer(requests, gen)
    for i, request in enumerate(requests):
        alone, _ = pipeline.answer([request], gen)
        assert batched.tokens[i] == alone.tokens[0]


def test_context_limit_is_checked_before_encoding(pipeline, image):
    pipeline.config.text.max_context, saved = 50, pipeline.config.text.max_context
    try:
        with pytest.raises(InputError, match=r"the prompt needs \d+ tokens \(\d+ visual\) but the model's context is 50"):
            pipeline.prepare([Request("x", images=[image])])
    finally:
        pipeline.config.text.max_context = saved


def test_bad_item_in_a_batch_names_the_request(pipeline, image, tmp_path):
    with pytest.raises(InputError, match="request 2: .*missing.png"):
        pipeline.prepare([Request("a", images=[image]), Request("b", images=[str(tmp_path / "missing.png")])])


def test_placeholder_and_file_counts_must_agree(pipeline, image):
    with pytest.raises(InputError, match="1 <image> and 0 <video> placeholder"):
        pipeline.prepare([Request("<image> and", images=[image, image])])


def test_video_request_end_to_end(pipeline, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (40, 40), (20 * i, 0, 0)).save(folder / f"frame{i}.png")
    batch, _ = pipeline.prepare([Request("What happens?", videos=[str(folder)])], Overrides(max_frames=5))
    assert batch.n_visual == [5 * (2 * 2 + 1)]


def _tiny(**vision):
    raw = yaml.safe_load(resolve_config_path("mllm-tiny").read_text())
    raw["vision"] = {**raw["vision"], **vision}
    return parse_config(raw, source="test")


def test_single_layout_gives_one_tile_of_tokens_at_any_size(tmp_path):
    """vision.layout: single (LLaVA-1.5): each image is the thumbnail alone, whatever its size."""
    config = _tiny(layout="single", newline=False)
    model, tokenizer = build_mllm(config, seed=0)
    single = Pipeline(model.eval(), tokenizer, config)
    gh, gw = model.connector.out_grid(model.encoder.grid)
    rng = np.random.default_rng(1)
    for size in ((20, 30), (400, 90)):
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        batch, _ = single.prepare([Request("What?", images=[str(path)])])
        assert batch.n_visual == [gh * gw]
        pixels = normalize(Image.open(path).convert("RGB"), 32, model.encoder.mean, model.encoder.std)[None]
        with torch.no_grad():
            thumbnail = model.connector(model.encoder(pixels).patches).flatten(0, 2)  # (gh*gw, d)
        first = int(torch.cdist(batch.embeds[0], thumbnail[:1]).argmin())
        assert torch.allclose(batch.embeds[0, first:first + gh * gw], thumbnail, atol=1e-6)
    with pytest.raises(InputError, match="--max-tiles applies to anyres models"):
        single.prepare([Request("What?", images=[str(path)])], Overrides(max_tiles=4))


def test_unknown_layout_and_unpad_rule_are_named():
    with pytest.raises(HybridError, match=r"vision.layout: 'tiles' is not a layout; use anyres .* or single"):
        _tiny(layout="tiles")
    with pytest.raises(HybridError, match=r"vision.unpad: 'crop' is not a rule; use touched .* or llava"):
        _tiny(unpad="crop")


def test_unpad_rule_reaches_the_tokens_and_their_count(tmp_path):
    """A 70x40 image on a 2x2 grid: its content edges fall inside features, where the rules differ."""
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(path)
    counts = {}
    for rule in ("touched", "llava"):
        config = _tiny(unpad=rule)
        model, tokenizer = build_mllm(config, seed=0)
        pipe = Pipeline(model.eval(), tokenizer, config)
        batch, _ = pipe.prepare([Request("What?", images=[str(path)])])
        counts[rule] = batch.n_visual[0]
        assert counts[rule] == pipe.visuals.image_tokens((70, 40), Overrides())
    assert counts["llava"] < counts["touched"]


def test_grid_cue_tells_every_row_from_every_other():
    """Attention finds a cell by a dot product with its cue: the cues of any two rows (or
    columns) must be far from parallel, neighbours included, over big anyres grids too."""
    rows, cols = grid_position(256, 2, 128, scale=1.0).double(), grid_position(2, 256, 128, scale=1.0).double()
    torch.testing.assert_close(rows[:, 1, :64], rows[:, 0, :64])  # a row's cue does not depend on the column
    torch.testing.assert_close(cols[1, :, 64:], cols[0, :, 64:])
    for channels in (rows[:, 0, :64], cols[0, :, 64:]):  # (256, 64) each
        unit = channels / channels.norm(dim=-1, keepdim=True)
        cosine = unit @ unit.T - torch.eye(len(unit), dtype=unit.dtype)
        assert cosine.abs().max() < 0.35, float(cosine.abs().max())



def test_without_a_thumbnail_an_image_is_its_tile_grid_alone(pipeline, image):
    """vision.thumbnail: false: the same grid tokens, without the thumbnail's in front, and the
    count predicted from the image size alone."""
    config = _tiny(thumbnail=False)
    model, tokenizer = build_mllm(config, seed=0)
    model.load_state_dict(pipeline.model.state_dict())
    bare = Pipeline(model.eval(), tokenizer, config)
    enc, img = model.encoder, Image.open(image).convert("RGB")
    gh, gw = model.connector.out_grid(enc.grid)
    for max_tiles in (1, 4, 16):
        grid = select_grid(img.size, 32, max_tiles=max_tiles)
        with torch.no_grad():
            full = encode_image(model, anyres_tiles(img, 32, grid, mean=enc.mean, std=enc.std))
            tiles = anyres_tiles(img, 32, grid, mean=enc.mean, std=enc.std, thumbnail=False)
            alone = encode_image(model, tiles)
        assert tiles.pixels.shape[0] == grid[0] * grid[1]
        torch.testing.assert_close(alone, full[gh * gw:])
        batch, _ = bare.prepare([Request("What?", images=[image])], Overrides(max_tiles=max_tiles))
        assert batch.n_visual[0] == alone.shape[0] == bare.visuals.image_tokens(img.size, Overrides(max_tiles=max_tiles))
    with pytest.raises(HybridError, match="vision.thumbnail: false leaves a single-layout image no tokens"):
        _tiny(layout="single", thumbnail=False)
