"""Hugging Face vision towers and LLaVA -> ours: tiny random models built by transformers
itself, converted by the production converters, compared on features and logits (fp32,
max |diff| <= 1e-4) on the same pixels and token ids."""

import functools
import json

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from _hf_dirs import conversion_fails, edited

from hybrid_mllm.convert import (
    ConversionError,
    cli,
    convert_hf_vision,
    convert_llava,
    hf_kind,
    load_hf_vision,
    load_llava,
)
from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.vision.anyres import anyres_tiles, num_visual_tokens, select_grid
from hybrid_mllm.runtime.splice import embed, encode_image
from hybrid_mllm.runtime.visual_inputs import VisualLoader

ATOL, IMAGE_ID, VOCAB = 1e-4, 259, 300  # IMAGE_ID: our byte tokenizer's <image>, used as LLaVA's too
VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8}
TEXT = {"vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}
TOWERS = {"clip": ("CLIPVisionConfig", "CLIPVisionModel"), "siglip": ("SiglipVisionConfig", "SiglipVisionModel")}
NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # transformers reads them as [height, width]


def _max_diff(a, b):
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().max().item()


def _pixels(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _tower(kind, path, seed=0, **save_kwargs):
    config_cls, model_cls = (getattr(transformers, name) for name in TOWERS[kind])
    torch.manual_seed(seed)
    model = model_cls(config_cls(**VISION)).eval()
    model.save_pretrained(path, **save_kwargs)
    return model


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """kind -> (HF model, its directory, our converted directory)."""
    root = tmp_path_factory.mktemp("towers")
    out = {}
    for kind in TOWERS:
        model = _tower(kind, root / kind)
        converted, _ = convert_hf_vision(root / kind, root / f"{kind}-ours")
        out[kind] = (model, root / kind, converted)
    return out


def _encoder_from_yaml(converted, **overrides):
    """Our encoder exactly as a user gets it: the written encoder.yaml, through the registry."""
    options = {**yaml.safe_load((converted / "encoder.yaml").read_text())["encoder"], **overrides}
    return get_registry().get("encoder", options.pop("name"))(**options).eval()


# ---- vision towers --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TOWERS)
@pytest.mark.parametrize("layer", [-2, -1])  # penultimate (LLaVA's), last (before the final norm)
@pytest.mark.parametrize("keep_cls", [False, True])
def test_tower_features_match_transformers(towers, kind, layer, keep_cls):
    hf_model, _, converted = towers[kind]
    pixels = _pixels()
    with torch.no_grad():
        theirs = hf_model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]  # (N, [1 +] 16, D)
        out = _encoder_from_yaml(converted, feature_layer=layer, keep_cls=keep_cls)(pixels)
    n_cls = 1 if kind == "clip" else 0  # SigLIP has no CLS token
    assert out.patches.shape == (2, 4, 4, 64)
    diff = _max_diff(out.patches.flatten(1, 2), theirs[:, n_cls:])
    assert diff <= ATOL, f"{kind} layer {layer}: patch features differ by {diff:.2e}"
    assert out.prefix.shape[1] == (n_cls if keep_cls else 0)
    if out.prefix.shape[1]:
        diff = _max_diff(out.prefix, theirs[:, :1])
        assert diff <= ATOL, f"{kind} layer {layer}: CLS differs by {diff:.2e}"


@pytest.mark.parametrize(("kind", "model_cls", "config"), [
    ("clip", "CLIPModel", lambda: transformers.CLIPConfig(
        vision_config=VISION, text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                           "num_attention_heads": 2, "vocab_size": 100}, projection_dim=16)),
    ("clip", "CLIPVisionModelWithProjection", lambda: transformers.CLIPVisionConfig(**VISION, projection_dim=16)),
    ("siglip", "SiglipModel", lambda: transformers.SiglipConfig(
        vision_config=VISION, text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                           "num_attention_heads": 2, "vocab_size": 100})),
])
def test_full_models_and_sharded_towers_give_their_vision_tower(tmp_path, kind, model_cls, config):
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config()).eval()
    model.save_pretrained(tmp_path / "hf", max_shard_size="50KB")  # sharded, with an index
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    encoder, options = load_hf_vision(tmp_path / "hf")
    assert options["model_args"]["act_layer"] == ("quick_gelu" if kind == "clip" else "gelu_tanh")
    pixels = _pixels()
    with torch.no_grad():
        theirs = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        diff = _max_diff(encoder(pixels).patches.flatten(1, 2), theirs[:, 1 if kind == "clip" else 0:])
    assert diff <= ATOL, f"{model_cls}: features differ by {diff:.2e}"


def test_timm_checkpoint_round_trip(towers, tmp_path):
    """timm's own model, saved as timm-named safetensors, loads through pretrained_path with
    the same features; and our converted file is such a timm checkpoint."""
    converted = towers["clip"][2]
    spec = yaml.safe_load((converted / "encoder.yaml").read_text())["encoder"]
    args = dict(spec["model_args"])
    eps = args.pop("norm_eps")
    torch.manual_seed(1)
    source = timm.create_model(spec["model_name"], num_classes=0, img_size=32,
                               norm_layer=functools.partial(torch.nn.LayerNorm, eps=eps), **args).eval()
    save_file(source.state_dict(), tmp_path / "vit.safetensors")  # every block, the final norm, no head
    pixels = _pixels()
    ours = _encoder_from_yaml(converted, pretrained_path=str(tmp_path / "vit.safetensors"))
    with torch.no_grad():
        theirs = source.forward_intermediates(pixels, indices=[1], norm=False, output_fmt="NLC",
                                              intermediates_only=True)[0]  # patches only
        diff = _max_diff(ours(pixels).patches.flatten(1, 2), theirs)
    assert diff <= ATOL, f"timm round trip: features differ by {diff:.2e}"
    assert set(load_file(converted / "model.safetensors")) == set(source.state_dict()) - {"norm.weight", "norm.bias"}


def test_model_args_are_validated_with_the_yaml_path():
    from hybrid_mllm.core.config import parse_config
    from hybrid_mllm.core.errors import ConfigError

    raw = {"model": {"vocab_size": VOCAB, "d_model": 32, "n_layer": 1, "layers": ["attention"],
                     "mixers": {"attention": {"n_head": 4}}},
           "vision": {"encoder": {"name": "timm", "model_name": "vit_base_patch16_clip_224", "image_size": 32,
                                  "model_args": {"embed_dm": 64, "img_size": 32, "depth": 2}}}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert ("vision.encoder: model_args.embed_dm: not a timm VisionTransformer argument. "
            "Did you mean 'embed_dim'?") in message
    assert "model_args.img_size: not allowed here (set image_size instead)" in message


# ---- LLaVA ----------------------------------------------------------------------------------


def _llava(path, next_=False, seed=0, **save_kwargs):
    vision = transformers.CLIPVisionConfig(**VISION)
    common = {"vision_config": vision, "text_config": transformers.LlamaConfig(**TEXT), "image_token_index": IMAGE_ID}
    torch.manual_seed(seed)
    if next_:
        model = transformers.LlavaNextForConditionalGeneration(
            transformers.LlavaNextConfig(**common, image_grid_pinpoints=NEXT_PINPOINTS))
    else:
        model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**common))
    model.eval().save_pretrained(path, **save_kwargs)
    return model


def _ids(n_image_tokens, seed=0):
    """Text, LLaVA's expanded image tokens, text -> (theirs (1, L), ours (L',) with one placeholder)."""
    g = torch.Generator().manual_seed(seed)
    before, after = torch.randint(0, 256, (5,), generator=g), torch.randint(0, 256, (7,), generator=g)
    theirs = torch.cat([before, torch.full((n_image_tokens,), IMAGE_ID), after])
    return theirs[None], torch.cat([before, torch.tensor([IMAGE_ID]), after])


def _logits(ours, tiles, our_ids):
    with torch.no_grad():
        batch = embed(ours, [our_ids], [[tiles]])
        return batch, ours(batch.embeds, batch.mask).logits


@pytest.mark.parametrize("layout", ["transformers-5", "transformers-4"])
def test_llava_parity(tmp_path, layout):
    hf_model = _llava(tmp_path / "hf", save_original_format=layout == "transformers-4")
    out, config = convert_llava(tmp_path / "hf", tmp_path / "ours")
    ours = load_checkpoint(out).model.eval()  # through our own checkpoint format
    assert config.vision.layout == "single" and config.vision.newline is False
    pixels = _pixels()
    with torch.no_grad():  # the visual tokens of an image: features -> projector
        theirs = hf_model.model.get_image_features(pixel_values=pixels)
        theirs = torch.stack(list(getattr(theirs, "pooler_output", theirs)))  # (N, 16, d_model)
        mine = ours.connector(ours.encoder(pixels).patches).flatten(1, 2)
    diff = _max_diff(mine, theirs)
    assert diff <= ATOL, f"visual tokens differ by {diff:.2e}"
    # An image file through our loader: LLaVA-1.5's layout, one tile and nothing else
    path = tmp_path / "image.png"
    Image.fromarray((torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
                    .numpy()).save(path)
    their_ids, our_ids = _ids(16)
    items, n_visual = VisualLoader(ours, config.vision).load(our_ids.tolist(), [str(path)], [])
    assert n_visual == 16 and items[0].pixels.shape == (1, 3, 32, 32)
    batch, logits = _logits(ours, items[0], our_ids)
    with torch.no_grad():
        features = hf_model.model.get_image_features(pixel_values=items[0].pixels)
        features = torch.stack(list(getattr(features, "pooler_output", features)))  # (1, 16, d_model)
        expected = hf_model(input_ids=their_ids, pixel_values=items[0].pixels).logits
        spliced = hf_model.get_input_embeddings()(their_ids)  # LLaVA's splice: features at the image tokens
        spliced[their_ids == IMAGE_ID] = features.flatten(0, 1)
    diff = _max_diff(batch.embeds, spliced)
    assert diff <= ATOL, f"spliced input embeddings differ by {diff:.2e}"
    diff = _max_diff(logits, expected)
    assert diff <= ATOL, f"LLaVA logits differ by {diff:.2e}"
    assert batch.n_visual == [16]


# (30, 62), (70, 40), ...: content edges inside a feature, where LLaVA-NeXT's unpad cuts partly covered rows
@pytest.mark.parametrize("size", [(64, 64), (30, 62), (70, 40), (41, 97), (97, 41)])  # (w, h)
def test_llava_next_parity(tmp_path, size):
    hf_model = _llava(tmp_path / "hf", next_=True)
    ours, _, config = load_llava(tmp_path / "hf")
    assert config.vision.newline and config.vision.pinpoints == [[w, h] for h, w in NEXT_PINPOINTS]
    assert config.vision.unpad == "llava"
    image = Image.fromarray((torch.rand(size[1], size[0], 3, generator=torch.Generator().manual_seed(0)) * 255)
                            .to(torch.uint8).numpy())
    grid = select_grid(image.size, 32, pinpoints=config.vision.pinpoints)
    tiles = anyres_tiles(image, 32, grid, mean=ours.encoder.mean, std=ours.encoder.std, unpad="llava")
    n_tokens = encode_image(ours, tiles).shape[0]
    assert n_tokens == num_visual_tokens(size, 32, ours.encoder.grid, pinpoints=config.vision.pinpoints,
                                         newline=True, unpad="llava")
    their_ids, our_ids = _ids(n_tokens)
    _, logits = _logits(ours, tiles, our_ids)
    with torch.no_grad():
        expected = hf_model(input_ids=their_ids, pixel_values=tiles.pixels[None],
                            image_sizes=torch.tensor([[size[1], size[0]]])).logits
    diff = _max_diff(logits, expected)
    assert diff <= ATOL, f"LLaVA-NeXT logits differ by {diff:.2e} (image {size}, grid {grid})"


# ---- bad input: one clear error, nothing written ----------------------------------------------




def test_tower_shape_mismatch_is_named(towers, tmp_path):
    src = edited(towers["clip"][1], tmp_path, config=lambda hf: hf.update(intermediate_size=256))
    conversion_fails(convert_hf_vision, src, tmp_path, "does not match its config.json (CLIPVisionModel):",
           "shape mismatch: encoder.layers.0.mlp.fc1.bias is (128,), config.json implies (256,)",
           "... and 5 more (shape mismatch: 9 in all)")


def test_tower_missing_and_unexpected_tensors_are_named(towers, tmp_path):
    def edit(weights):
        del weights["encoder.layers.1.self_attn.k_proj.weight"]
        weights["encoder.layers.0.self_attn.kk_proj.weight"] = weights.pop("pre_layrnorm.bias")

    conversion_fails(convert_hf_vision, edited(towers["clip"][1], tmp_path, tensors=edit), tmp_path,
           "missing tensor: encoder.layers.1.self_attn.k_proj.weight", "missing tensor: pre_layrnorm.bias",
           "unexpected tensor: encoder.layers.0.self_attn.kk_proj.weight")


def test_tower_tensor_with_a_non_numeric_layer_is_named(towers, tmp_path):
    def edit(weights):
        weights["encoder.layers.x.mlp.fc1.bias"] = weights["encoder.layers.0.mlp.fc1.bias"].clone()

    conversion_fails(convert_hf_vision, edited(towers["clip"][1], tmp_path, tensors=edit), tmp_path,
           "tensor encoder.layers.x.mlp.fc1.bias: layer index 'x' is not a number")


def test_tower_missing_shard(tmp_path):
    _tower("siglip", tmp_path / "hf", max_shard_size="50KB")
    shards = sorted((tmp_path / "hf").glob("model-*.safetensors"))
    shards[1].unlink()
    conversion_fails(convert_hf_vision, tmp_path / "hf", tmp_path, "incomplete: missing shard(s)", shards[1].name)


@pytest.mark.parametrize(("edit", "messages"), [
    (lambda hf: hf.update(hidden_act="relu", num_channels=1),
     ["hidden_act: 'relu' is not supported", "num_channels: 1 is not supported"]),
    (lambda hf: hf.update(model_type="dinov2", architectures=["CLIPVisionModel"]),
     ["vision model_type 'dinov2' cannot be converted"]),
    (lambda hf: hf.update(hidden_act=["gelu"]), ["hidden_act: ['gelu'] is not supported"]),
    (lambda hf: hf.update(model_type=["clip_vision_model"]), ["vision model_type ['clip_vision_model'] cannot"]),
    (lambda hf: hf.update(model_type=["clip_vision_model"], architectures=[]), ["architectures none is not a vision"]),
])
def test_tower_unsupported_settings_are_named(towers, tmp_path, edit, messages):
    conversion_fails(convert_hf_vision, edited(towers["clip"][1], tmp_path, config=edit), tmp_path, *messages)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava") / "hf"
    _llava(path)
    return path


@pytest.mark.parametrize(("edit", "messages"), [
    (lambda hf: hf.update(vision_feature_select_strategy="full", projector_hidden_act="relu"),
     ["vision_feature_select_strategy: 'full' is not supported here", "projector_hidden_act 'relu'"]),
    (lambda hf: hf.update(vision_feature_layer=[-2, -5]), ["vision_feature_layer: [-2, -5] is not supported"]),
    (lambda hf: hf["text_config"].update(model_type="mistral", hidden_act="gelu"),
     ["text_config.model_type: 'mistral' is not supported", "text_config.hidden_act: 'gelu' is not supported"]),
])
def test_llava_unsupported_settings_are_named(llava_dir, tmp_path, edit, messages):
    conversion_fails(convert_llava, edited(llava_dir, tmp_path, config=edit), tmp_path, *messages)


def test_llava_missing_unexpected_and_misshaped_tensors(llava_dir, tmp_path):
    def edit(weights):
        del weights["multi_modal_projector.linear_2.bias"]
        weights["multi_modal_projector.linear_3.bias"] = torch.zeros(3)
        weights["vision_tower.encoder.layers.0.mlp.fc1.bias"] = torch.zeros(5)

    conversion_fails(convert_llava, edited(llava_dir, tmp_path, tensors=edit), tmp_path,
           "does not match its config.json (LlavaForConditionalGeneration):",
           "missing tensor: multi_modal_projector.linear_2.bias",
           "unexpected tensor: multi_modal_projector.linear_3.bias",
           "shape mismatch: vision_tower.encoder.layers.0.mlp.fc1.bias is (5,), config.json implies (128,)")


# ---- hybrid-convert: detected from config.json ----------------------------------------------


def test_cli_detects_towers_and_llava(towers, llava_dir, tmp_path, capsys):
    assert cli.main([str(towers["siglip"][1]), str(tmp_path / "enc"), "--feature-layer", "-1"]) == 0
    assert "timm encoder weights" in capsys.readouterr().out
    spec = yaml.safe_load((tmp_path / "enc" / "encoder.yaml").read_text())["encoder"]
    assert spec["feature_layer"] == -1
    assert spec["pretrained_path"] == str((tmp_path / "enc").resolve() / "model.safetensors")
    with pytest.raises(ConversionError, match=r"^--feature-layer: for vision towers only, not a LLaVA model \(config"):
        cli.main([str(llava_dir), str(tmp_path / "mm"), "--feature-layer", "-1"])
    assert cli.main([str(llava_dir), str(tmp_path / "mm")]) == 0
    assert "hybrid-mllm checkpoint" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "mm").model.has_vision


def test_unknown_architecture_lists_every_supported_one(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BlipForConditionalGeneration"]}))
    with pytest.raises(ConversionError) as info:
        hf_kind(json.loads((tmp_path / "config.json").read_text()), tmp_path)
    for name in ("LlamaForCausalLM", "LlavaNextForConditionalGeneration", "SiglipVisionModel", "CLIPModel"):
        assert name in str(info.value)
    assert hf_kind({"model_type": "siglip_vision_model"}, tmp_path) == "vision"
    with pytest.raises(ConversionError, match=r"model_type \['llava'\]\)"):
        hf_kind({"model_type": ["llava"]}, tmp_path)


def test_library_does_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys, hybrid_mllm.convert, hybrid_mllm.plugins.encoders; "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
