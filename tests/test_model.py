"""The assembled hybrid LM: state carried through decoding, chunked prefill, padding, MoE."""

import pytest
import torch

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.ffn import MoE
from hybrid_mllm.core.presets import resolve_config_path


@pytest.fixture(scope="module")
def model():
    config = load_config(resolve_config_path("hybrid-tiny"))
    return build_model(config, seed=0).eval()


def _ids(batch, length, seed=0):
    return torch.randint(0, 259, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_decode_token_by_token_equals_full_forward(model):
    ids = _ids(2, 24)
    full = model(ids).logits
    out = model(ids[:, :10])
    steps = [out.logits]
    state = out.state
    for t in range(10, 24):
        out = model(ids[:, t:t + 1], state=state)
        state = out.state
        steps.append(out.logits)
    diff = (torch.cat(steps, 1) - full).abs().max().item()
    assert diff < 1e-4, f"max |diff| = {diff:.2e}"


@torch.no_grad()
def test_chunked_prefill_equals_one_pass(model):
    ids = _ids(1, 50)
    last = model(ids).logits[:, -1:]
    out = model.prefill(ids, chunk_size=16)
    diff = (out.logits - last).abs().max().item()
    assert diff < 1e-4, f"max |diff| = {diff:.2e}"


@torch.no_grad()
def test_left_padded_batch_matches_each_sequence_alone(model):
    short, long = _ids(1, 9, seed=1), _ids(1, 15, seed=2)
    batch = torch.cat([torch.cat([torch.zeros(1, 6, dtype=torch.long), short], 1), long])
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[0, :6] = False
    out = model(batch, mask=mask)
    alone = model(short)
    diff = (out.logits[0, 6:] - alone.logits[0]).abs().max().item()
    assert diff < 1e-4, f"padded vs alone: max |diff| = {diff:.2e}"
    nxt = _ids(2, 1, seed=3)
    step = model(nxt, state=out.state, mask=torch.ones(2, 1, dtype=torch.bool))
    step_alone = model(nxt[:1], state=alone.state)
    diff = (step.logits[0] - step_alone.logits[0]).abs().max().item()
    assert diff < 1e-4, f"next token after padded prefill: max |diff| = {diff:.2e}"


def test_moe_routes_top_k_and_returns_a_load_balancing_loss():
    torch.manual_seed(0)
    moe = MoE(16, n_experts=4, top_k=2, d_hidden=32)
    x = torch.randn(2, 8, 16, requires_grad=True)
    y, aux = moe(x)
    assert y.shape == x.shape
    # perfectly balanced routing gives exactly 1; any routing gives >= ~1
    assert aux.item() > 0.9
    (y.sum() + aux).backward()
    assert moe.router.weight.grad.abs().sum() > 0
    assert all(e.gate.weight.grad is not None for e in moe.experts)


def test_moe_equals_dense_mixture():
    """Sparse dispatch equals computing every expert and weighting by the top-k gates."""
    torch.manual_seed(0)
    moe = MoE(8, n_experts=3, top_k=2, d_hidden=16, normalize_top_k=True)
    x = torch.randn(1, 5, 8)
    y, _ = moe(x)
    probs = torch.softmax(moe.router(x), -1)
    w, idx = probs.topk(2, -1)
    w = w / w.sum(-1, keepdim=True)
    outs = torch.stack([e(x)[0] for e in moe.experts], -2)  # (1, 5, E, 8)
    dense = (outs.gather(-2, idx[..., None].expand(-1, -1, -1, 8)) * w[..., None]).sum(-2)
    torch.testing.assert_close(y, dense, atol=1e-5, rtol=1e-5)


def test_training_step_reduces_loss(model):
    m = build_model(load_config(resolve_config_path("hybrid-tiny")), seed=1)
    ids = _ids(2, 32, seed=5)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = m(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), ids[:, 1:].flatten()) + 0.01 * out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_tied_embeddings_share_storage(model):
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()


@torch.no_grad()
def test_embedding_multiplier_scales_the_lookup_not_the_tied_head():
    """model.embedding_multiplier (Gemma's sqrt(d_model), Granite's embedding_multiplier)."""
    import yaml

    from hybrid_mllm.core.config import parse_config

    raw = yaml.safe_load(resolve_config_path("hybrid-tiny").read_text())
    plain = build_model(parse_config(raw), seed=0).eval()
    raw["model"]["embedding_multiplier"] = 4.0
    scaled = build_model(parse_config(raw), seed=0).eval()
    ids = _ids(1, 6)
    torch.testing.assert_close(scaled.embed(ids), 4.0 * plain.embed(ids))
    torch.testing.assert_close(scaled.embed.table(), 4.0 * plain.embed.weight)
    assert scaled.lm_head.weight is scaled.embed.weight
    torch.testing.assert_close(scaled(ids).logits, plain(inputs_embeds=4.0 * plain.embed(ids)).logits)
