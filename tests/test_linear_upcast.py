"""bfloat16 linear layers as float32 products where the CPU has no bfloat16 matmul
(`plugins/mixers/linear_upcast.py`): when it applies, what it computes, and a whole bfloat16
prefill through it against PyTorch's own bfloat16 matmuls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hybrid_mllm.core import decode
from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.decode import decode_paths
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.plugins.mixers import gemv_cpu, linear_upcast

ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f amx_bf16 amx_tile\n"


def test_native_bf16_matmul_is_read_from_the_cpu_flags():
    assert not linear_upcast.native_in(ZEN3)
    assert linear_upcast.native_in(ZEN4) and linear_upcast.native_in(SAPPHIRE_RAPIDS)
    assert linear_upcast.native_in("Features\t: fp asimd bf16\n")  # no x86 flags line: left to PyTorch


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(linear_upcast, "bf16_matmul_is_native", lambda: False)


def test_takes_bf16_rows_the_few_row_kernel_leaves(no_native_bf16):
    w = torch.randn(64, 32).bfloat16()
    many, few = torch.randn(2, 9, 32).bfloat16(), torch.randn(1, 1, 32).bfloat16()
    assert linear_upcast.accepts(many, w, None)
    assert linear_upcast.accepts(few, w, None) == (gemv_cpu.accepts(few, w, None) is False)
    assert not linear_upcast.accepts(many.float(), w.float(), None)  # float32: PyTorch's own
    assert not linear_upcast.accepts(many, w, torch.zeros(64))  # a float32 bias: not this kernel's


def test_declines_where_the_cpu_has_bf16_matmul(monkeypatch):
    monkeypatch.setattr(linear_upcast, "bf16_matmul_is_native", lambda: True)
    assert not linear_upcast.accepts(torch.randn(9, 32).bfloat16(), torch.randn(64, 32).bfloat16(), None)


@pytest.mark.parametrize("bias", [False, True])
def test_rounds_the_float32_product_once_to_bf16(bias):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 17, 200, generator=gen).bfloat16(), torch.randn(70, 200, generator=gen).bfloat16()
    b = torch.randn(70, generator=gen).bfloat16() if bias else None
    y = linear_upcast.linear_upcast(x, w, b)
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert y.dtype == torch.bfloat16 and y.shape == (3, 17, 70)
    # within one bf16 rounding (2^-8 relative) of the exact product, and as close as PyTorch's bf16 matmul
    assert ((y.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-3).all()
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=2**-7, atol=1e-2)


def test_a_bf16_prefill_through_it_matches_pytorch_bf16(no_native_bf16, monkeypatch):
    lm = build_model(load_config(resolve_config_path("jamba-small")), seed=0, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, lm.embed.num_embeddings, (2, 40), generator=torch.Generator().manual_seed(1))
    assert linear_upcast.CPU_BF16_UPCAST in decode._linear_kernels()  # registered by the built-in plugin
    calls = []
    counted = decode.LinearKernel(fn=lambda *args: calls.append(1) or linear_upcast.linear_upcast(*args),
                                  accepts=linear_upcast.accepts)
    with torch.no_grad():
        with decode_paths(fast=False):
            ref = lm.prefill(ids).logits.float()  # PyTorch's bf16 matmuls
        monkeypatch.setattr(decode, "_linear_kernels", lambda: (gemv_cpu.CPU_FEW_ROWS, counted))
        out = lm.prefill(ids).logits.float()
    assert len(calls) >= 8 * 3, "the prefill's linear layers did not reach the kernel"
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)
