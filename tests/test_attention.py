"""Attention's head options: partial rotary against a few-line reference, head_dim sizing the
projections, and one-line errors naming the option."""

import math

import pytest
import torch

from hybrid_mllm.plugins.mixers.attention import Attention, _rotate


def _rotate_reference(x, pos, theta, rotary_dim):
    """Each pair (i, i + r/2) of the first r dims turned by pos * theta^(-2i / r); the rest kept."""
    out = x.clone()
    half = rotary_dim // 2
    for i in range(half):
        angle = pos[:, None, :] * theta ** (-2 * i / rotary_dim)  # (B, 1, L)
        a, b = x[..., i], x[..., i + half]
        out[..., i] = a * torch.cos(angle) - b * torch.sin(angle)
        out[..., i + half] = b * torch.cos(angle) + a * torch.sin(angle)
    return out


@pytest.mark.parametrize("rotary_dim", [2, 6, 12])
def test_partial_rotary_matches_reference(rotary_dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 12, generator=g, dtype=torch.float64).float()
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    ours = _rotate(x, pos, 500.0, rotary_dim)
    diff = (ours - _rotate_reference(x, pos.float(), 500.0, rotary_dim)).abs().max().item()
    assert diff <= 1e-5, f"partial rotary differs from the reference by {diff:.2e}"
    assert torch.equal(ours[..., rotary_dim:], x[..., rotary_dim:])  # the pass-through dims


def test_attention_with_rotary_dim_rotates_only_that_part():
    """Position enters through the rotated dims only: with q, k zero there, the scores ignore position."""
    torch.manual_seed(0)
    att = Attention(16, n_head=2, head_dim=8, rope=True, rotary_dim=4).eval()
    assert att.q_proj.weight.shape == (16, 16) and att.k_proj.weight.shape == (16, 16)
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        for proj in (att.q_proj, att.k_proj):
            proj.weight.view(2, 8, 16)[:, :4] = 0  # the rotated dims of both heads
        y, _ = att(x)
        att.rope = False
        y_no_rope, _ = att(x)
    assert (y - y_no_rope).abs().max() <= 1e-6


def test_head_dim_sizes_the_projections_and_cache():
    att = Attention(16, n_head=4, n_kv_head=2, head_dim=6)
    assert att.q_proj.weight.shape == (24, 16) and att.k_proj.weight.shape == (12, 16)
    assert att.o_proj.weight.shape == (16, 24)
    y, (k, v, kmask) = att(torch.randn(2, 3, 16))
    assert y.shape == (2, 3, 16) and k.shape == v.shape == (2, 2, 3, 6) and kmask.shape == (2, 3)
    assert math.isclose(att.head_dim, 6)


@pytest.mark.parametrize("options, says", [
    ({"n_head": 3}, "n_head (3) must divide d_model (16), or set head_dim"),
    ({"n_head": 2, "head_dim": 0}, "head_dim must be >= 1, got 0"),
    ({"n_head": 2, "rotary_dim": 4}, "rotary_dim (4) needs rope: true"),
    ({"n_head": 2, "rope": True, "rotary_dim": 3}, "rotary_dim must be even and between 2 and head_dim (8), got 3"),
    ({"n_head": 2, "rope": True, "rotary_dim": 10}, "rotary_dim must be even and between 2 and head_dim (8), got 10"),
    ({"n_head": 2, "rope": True, "head_dim": 5}, "rope needs an even head_dim, got 5"),
])
def test_bad_head_options_are_one_line_naming_the_option(options, says):
    with pytest.raises(ValueError) as info:
        Attention(16, **options)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_partial_rotary_with_its_own_head_dim_exports_to_onnx():
    pytest.importorskip("onnxruntime")
    from hybrid_mllm.testing import check_export

    check_export(Attention, d_model=16, options={"n_head": 2, "n_kv_head": 1, "head_dim": 12, "rope": True,
                                                 "rotary_dim": 6})
