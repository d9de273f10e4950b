"""The Mamba-2 hybrids' FFN kinds: relu2_mlp (Nemotron-H) and shared_moe (Granite-4.0-H)."""

import torch

from hybrid_mllm.core.ffn import MoE
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.plugins.ffns import Relu2MLP, SharedMoE


def _x(seed=0):
    return torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(seed))


def test_registered_as_ffns():
    registry = get_registry()
    assert registry.get("ffn", "relu2_mlp") is Relu2MLP and registry.get("ffn", "shared_moe") is SharedMoE


@torch.no_grad()
def test_relu2_is_down_of_squared_relu_of_up():
    torch.manual_seed(0)
    mlp = Relu2MLP(16, d_hidden=24, bias=True)
    x = _x()
    hidden = torch.clamp(x @ mlp.up.weight.T + mlp.up.bias, min=0)
    y, aux = mlp(x)
    torch.testing.assert_close(y, (hidden * hidden) @ mlp.down.weight.T + mlp.down.bias)
    assert aux.item() == 0.0


@torch.no_grad()
def test_shared_moe_adds_the_shared_expert_to_the_renormalised_routed_ones():
    torch.manual_seed(0)
    ffn = SharedMoE(16, n_experts=4, top_k=2, d_hidden=12, shared_d_hidden=20)
    assert ffn.routed.normalize_top_k and ffn.shared.up.out_features == 20
    x = _x()
    tokens = x.reshape(-1, 16)
    logits = tokens @ ffn.routed.router.weight.T
    top, chosen = logits.topk(2, -1)
    weights = torch.softmax(top, -1)  # Granite's router: a softmax over the top-k logits
    routed = torch.stack([sum(weights[t, j] * ffn.routed.experts[int(chosen[t, j])](tokens[t])[0] for j in range(2))
                          for t in range(tokens.shape[0])])
    y, aux = ffn(x)
    torch.testing.assert_close(y.reshape(-1, 16), routed + ffn.shared(tokens)[0], atol=1e-5, rtol=1e-5)
    assert aux.item() > 0 and isinstance(ffn.routed, MoE)


def test_shared_moe_trains():
    torch.manual_seed(0)
    ffn = SharedMoE(16, n_experts=3, top_k=1, d_hidden=8)
    y, aux = ffn(_x())
    (y.square().mean() + aux).backward()
    assert ffn.shared.down.weight.grad.abs().sum() > 0 and ffn.routed.router.weight.grad.abs().sum() > 0


def test_moe_takes_zero_tokens_on_every_path():
    """An empty batch or sequence: zeros of its shape and a zero aux loss, decoding or not."""
    from hybrid_mllm.core.decode import decode_paths

    moe = MoE(16, n_experts=4, top_k=2, d_hidden=24).eval()
    for shape in ((0, 1, 16), (0, 5, 16), (2, 0, 16)):
        for fast, grad in ((True, False), (False, False), (False, True)):
            with torch.set_grad_enabled(grad), decode_paths(fast=fast):
                y, aux = moe(torch.randn(*shape))
            assert y.shape == shape and aux.item() == 0.0, (shape, fast, grad)
