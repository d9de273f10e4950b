"""Mamba's causal depthwise conv1d: both memory orders give the same bits, and match numpy.

Mamba hands the conv a (B, D, L) transposed view of a (B, L, D) projection, which the conv
works on in that memory order; a contiguous (B, D, L) input takes the other path. Values,
the carried state and gradients must agree exactly, at lengths 1 (decode) and up.
"""

import numpy as np
import pytest
import torch

from hybrid_mllm.plugins.mixers.conv import causal_conv1d
from hybrid_mllm.plugins.mixers.ops_cpu import reference_causal_conv1d


def _inputs(length: int, kernel: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    projection = torch.randn(2, length, 2 * 24, generator=g)  # (B, L, 2D), as Mamba's in_proj gives
    x = projection.transpose(1, 2)[:, :24]  # (B, D, L) view, channels innermost in memory
    return x, torch.randn(24, kernel, generator=g), torch.randn(24, generator=g), torch.randn(2, 24, kernel - 1,
                                                                                            generator=g)


@pytest.mark.parametrize("length", [1, 3, 70])
@pytest.mark.parametrize("kernel", [1, 2, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_both_memory_orders_agree_to_the_bit_and_match_numpy(length, kernel, with_bias):
    x, weight, bias, state = _inputs(length, kernel)
    bias = bias if with_bias else None
    assert x.stride(1) == 1 and not x.is_contiguous()
    y, new_state = causal_conv1d(x, weight, bias, state)
    y_c, new_state_c = causal_conv1d(x.contiguous(), weight, bias, state)
    assert y.shape == y_c.shape == x.shape and new_state.shape == new_state_c.shape == state.shape
    assert torch.equal(y, y_c) and torch.equal(new_state, new_state_c)
    y_np, state_np = reference_causal_conv1d(x.numpy(), weight.numpy(),
                                             np.zeros(24, np.float32) if bias is None else bias.numpy(), state.numpy())
    np.testing.assert_allclose(y.numpy(), y_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(new_state.numpy(), state_np)


def test_both_memory_orders_give_the_same_gradients():
    x, weight, bias, state = _inputs(33, 4, seed=1)
    grads = []
    for contiguous in (False, True):
        x_bld = x.transpose(1, 2).detach().clone().requires_grad_()  # (B, L, D) leaf
        leaves = [x_bld] + [t.detach().clone().requires_grad_() for t in (weight, bias, state)]
        x_in = x_bld.transpose(1, 2).contiguous() if contiguous else x_bld.transpose(1, 2)
        assert (x_in.stride(1) == 1) != contiguous
        y, new_state = causal_conv1d(x_in, *leaves[1:])
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().add(new_state.sum()).backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
