"""A model's CPU weights moved onto huge pages (`runtime/huge_pages`): the same model after."""

from __future__ import annotations

import sys

import pytest
import torch
from _decode_fixtures import decode_logits, jamba
from torch import nn

from hybrid_mllm.runtime import huge_pages
from hybrid_mllm.runtime.huge_pages import HUGE_PAGE, weights_on_huge_pages

thp = pytest.mark.skipif(not sys.platform.startswith("linux") or huge_pages.thp_mode() not in ("always", "madvise"),
                         reason="needs Linux with transparent huge pages (always or madvise)")


class _Views(nn.Module):
    """Two parameters viewing one storage, a strided one and a tiny one."""

    def __init__(self):
        super().__init__()
        base = torch.randn(2, 1024, 1024)
        self.first, self.second = nn.Parameter(base[0]), nn.Parameter(base[1])
        self.strided = nn.Parameter(torch.randn(512, 1024).t())
        self.bias = nn.Parameter(torch.randn(3), requires_grad=False)


@thp
def test_values_layout_and_sharing_stay_and_the_weights_start_on_a_huge_page():
    m = _Views()
    before = {n: (p.detach().clone(), p.shape, p.stride(), p.dtype, p.requires_grad) for n, p in m.named_parameters()}
    gap = m.second.data_ptr() - m.first.data_ptr()
    assert weights_on_huge_pages(m) == "huge pages"
    for n, p in m.named_parameters():
        value, shape, stride, dtype, grad = before[n]
        assert isinstance(p, nn.Parameter) and p.shape == shape and p.stride() == stride and p.dtype == dtype
        assert p.requires_grad == grad and torch.equal(p.detach(), value), n
    assert m.second.data_ptr() - m.first.data_ptr() == gap  # still views of one storage
    assert m.first.untyped_storage().data_ptr() % HUGE_PAGE == 0


@thp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_model_decodes_the_same_after_and_tied_weights_stay_tied(dtype):
    lm = jamba(dtype)
    lm.blocks[0].mixer_norm.weight.data.normal_()
    ids = torch.randint(0, 263, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = decode_logits(lm, ids, 8)
    assert weights_on_huge_pages(lm) == "huge pages"
    assert lm.lm_head.weight is lm.embed.weight
    torch.testing.assert_close(decode_logits(lm, ids, 8), expected, atol=0, rtol=0)


def _pointers(module: nn.Module) -> list[int]:
    return [p.data_ptr() for p in module.parameters()]


@pytest.mark.parametrize("why, setup", [
    ("HYBRID_MLLM_MALLOC=system", lambda mp: mp.setenv("HYBRID_MLLM_MALLOC", "system")),
    ("transparent huge pages: never", lambda mp: mp.setattr(huge_pages, "thp_mode", lambda: "never")),
    ("transparent huge pages: not available", lambda mp: mp.setattr(huge_pages, "thp_mode", lambda: None)),
])
def test_it_leaves_the_weights_where_asked_or_where_the_kernel_has_no_huge_pages(why, setup, monkeypatch):
    setup(monkeypatch)
    m = _Views()
    pointers = _pointers(m)
    assert weights_on_huge_pages(m) == f"not moved ({why})"
    assert _pointers(m) == pointers


@thp
def test_under_one_huge_page_of_weights_nothing_moves():
    m = nn.Linear(64, 64)
    pointers = _pointers(m)
    assert weights_on_huge_pages(m) == "not moved (under one huge page of weights)"
    assert _pointers(m) == pointers


def test_the_kernel_setting_is_read_from_its_bracketed_word(tmp_path, monkeypatch):
    setting = tmp_path / "enabled"
    monkeypatch.setattr(huge_pages, "THP_SETTING", setting)
    assert huge_pages.thp_mode() is None
    setting.write_text("always [madvise] never\n")
    assert huge_pages.thp_mode() == "madvise"
    setting.write_text("[always] madvise never\n")
    assert huge_pages.thp_mode() == "always"
