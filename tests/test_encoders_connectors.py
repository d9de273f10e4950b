"""Encoders and connectors: shapes, declared token counts, feature layers, weights from files."""

import pytest
import torch
from safetensors.torch import save_file

from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.testing import CONNECTOR_CHECKS, ENCODER_CHECKS

REG = get_registry()
timm = pytest.importorskip("timm")


@pytest.mark.parametrize("name", REG.names("connector"))
@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (1, 1)])
def test_connector_out_grid_matches_forward(name, grid):
    connector = REG.get("connector", name)(32, in_dim=16)
    out = connector(torch.randn(2, *grid, 16))
    assert out.shape == (2, *connector.out_grid(grid), 32)


def test_tiny_encoder_grid():
    enc = REG.get("encoder", "tiny")(image_size=32, patch_size=8, width=16)
    out = enc(torch.randn(3, 3, 32, 32))
    assert out.patches.shape == (3, 4, 4, 16) and out.prefix.shape == (3, 0, 16)


def _timm_vit(**options):
    return REG.get("encoder", "timm")(model_name="vit_tiny_patch16_224", image_size=32, **options)


def test_timm_encoder_takes_the_requested_layer():
    torch.manual_seed(0)
    enc = _timm_vit(feature_layer=-2)
    assert len(enc.vit.blocks) == 11  # the last block is dropped, as in LLaVA / MMJamba
    pixels = torch.randn(2, 3, 32, 32)
    out = enc(pixels)
    assert out.patches.shape == (2, 2, 2, 192)
    full = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0)
    full.load_state_dict({k: v for k, v in enc.vit.state_dict().items()}, strict=False)
    x = full.norm_pre(full.patch_drop(full._pos_embed(full.patch_embed(pixels))))
    for block in full.blocks[:11]:
        x = block(x)
    torch.testing.assert_close(out.patches.reshape(2, 4, 192), x[:, 1:])


def test_timm_encoder_keeps_cls_on_request():
    out = _timm_vit(keep_cls=True)(torch.randn(1, 3, 32, 32))
    assert out.prefix.shape == (1, 1, 192)


def test_timm_encoder_loads_local_safetensors(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "vit.safetensors")
    enc = _timm_vit(pretrained_path=str(tmp_path / "vit.safetensors"))
    torch.testing.assert_close(enc.vit.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_timm_encoder_rejects_weights_of_another_model(tmp_path):
    other = timm.create_model("vit_small_patch16_224", img_size=32, num_classes=0)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "vit.safetensors")
    with pytest.raises(HybridError, match="does not fit the encoder"):
        _timm_vit(pretrained_path=str(tmp_path / "vit.safetensors"))


def test_frozen_encoder_has_no_trainable_parameters():
    assert not any(p.requires_grad for p in _timm_vit(frozen=True).parameters())


def test_unknown_timm_model_suggests():
    with pytest.raises(ValueError, match="unknown timm model 'vit_tiny_patch16_2240'. Did you mean"):
        REG.get("encoder", "timm")(model_name="vit_tiny_patch16_2240")


# small options per built-in component; one not listed is built with its defaults
ENCODER_OPTIONS = {"tiny": {"image_size": 32, "patch_size": 8, "width": 16},
                   "timm": {"model_name": "vit_tiny_patch16_224", "image_size": 32, "keep_cls": True}}
CONNECTOR_OPTIONS = {"pool": {"stride": 2}, "conv": {"stride": 2}}


@pytest.mark.parametrize("check", ENCODER_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", REG.names("encoder"))
def test_encoder_contract(name, check):
    check(REG.get("encoder", name), ENCODER_OPTIONS.get(name))


@pytest.mark.parametrize("check", CONNECTOR_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", REG.names("connector"))
def test_connector_contract(name, check):
    check(REG.get("connector", name), options=CONNECTOR_OPTIONS.get(name))
