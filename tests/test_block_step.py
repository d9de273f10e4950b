"""The fused CPU block steps (`plugins/mixers/block_cpu`) against the unfused decode path.

A `Block` decoding one token runs a half (norm, Mamba mixer or FFN, residual) in one C call
when a registered `BlockStep` accepts it; everything else takes the modules' own path. Spies
on the registered steps say which ran.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from _decode_fixtures import decode_logits, fast_and_generic, jamba, spy_steps, without

from hybrid_mllm.core.decode import decode_paths
from hybrid_mllm.core.ffn import MoE, SwiGLU
from hybrid_mllm.core.model import Block
from hybrid_mllm.plugins.mixers import block_cpu, stack_cpu
from hybrid_mllm.plugins.mixers.attention import Attention
from hybrid_mllm.plugins.mixers.mamba import Mamba
from hybrid_mllm.plugins.mixers.mamba2 import Mamba2

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
D = 64
needs_block = pytest.mark.skipif(block_cpu.available(torch.float32) is not None,
                                 reason=str(block_cpu.available(torch.float32)))
pytestmark = needs_block


@pytest.fixture
def ran(monkeypatch):
    """Counts of the fused calls per part, through spies on the registered steps."""
    return spy_steps(monkeypatch)


def _ffn(kind: str, dtype, **options):
    if kind == "mlp":
        return SwiGLU(D, d_hidden=96, dtype=dtype, **options)
    return MoE(D, n_experts=4, d_hidden=80, dtype=dtype, **options)


def _randomize_norms(block: Block) -> None:
    with torch.no_grad():
        for norm in (block.mixer_norm, block.ffn_norm):
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)


def _steps(block: Block, x: torch.Tensor, state, *, fast: bool, mask=None):
    """Feed x (B, L, d) one token at a time -> (B, L, d) outputs, last state."""
    ys = []
    with torch.no_grad(), decode_paths(fast=fast):
        for t in range(x.shape[1]):
            y, state, _ = block(x[:, t:t + 1], state, None if mask is None else mask[:, t:t + 1])
            ys.append(y)
    return torch.cat(ys, 1), state


def _assert_close(fast, ref, dtype, what: str) -> None:
    scale = max(ref.float().abs().max().item(), 1.0)
    err = (fast.float() - ref.float()).abs().max().item()
    assert err <= TOL[dtype] * scale, f"{what}: max |fused - unfused| = {err} (values up to {scale})"


def _compare(block: Block, batch: int, dtype, steps: int = 4):
    """Prefill 5 tokens, then step: fused (fast) against unfused (generic) outputs and states."""
    gen = torch.Generator().manual_seed(1)
    prompt, tokens = (torch.randn(batch, n, D, generator=gen).to(dtype) for n in (5, steps))
    with torch.no_grad():
        _, state, _ = block(prompt)
    y_fast, s_fast = _steps(block, tokens, state, fast=True)
    y_ref, s_ref = _steps(block, tokens, state, fast=False)
    _assert_close(y_fast, y_ref, dtype, "output")
    for i, (fast, ref) in enumerate(zip(s_fast, s_ref, strict=True)):
        assert fast.dtype == ref.dtype and fast.shape == ref.shape
        _assert_close(fast, ref, dtype, f"state[{i}]")
    return steps


FFNS = [("mlp", {}), ("moe", {"top_k": 1}), ("moe", {"top_k": 2}), ("moe", {"top_k": 2, "normalize_top_k": True}),
        ("moe", {"top_k": 1, "normalize_top_k": True})]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("kind", "options"), FFNS)
@pytest.mark.parametrize("inner_norms", [False, True])
def test_mamba_block_fused_matches_unfused(dtype, batch, kind, options, inner_norms, ran):
    torch.manual_seed(0)
    block = Block(D, Mamba(D, dt_rank=5, inner_norms=inner_norms, dtype=dtype), _ffn(kind, dtype, **options),
                  residual_multiplier=0.7 if inner_norms else 1.0, dtype=dtype).eval()
    _randomize_norms(block)
    steps = _compare(block, batch, dtype)
    assert ran == {"mixer": steps, "ffn": steps, "stack": 0, "model": 0}


ATTENTIONS = [{"n_head": 4, "n_kv_head": 2, "rope": True}, {"n_head": 4}, {"n_head": 4, "n_kv_head": 1, "bias": True},
              {"n_head": 2, "head_dim": 24, "rope": True, "rotary_dim": 8, "rope_theta": 500.0}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("residual_multiplier", [1.0, 0.5])
@pytest.mark.parametrize("options", ATTENTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_attention_moe_block_fused_matches_unfused(dtype, batch, residual_multiplier, options, ran):
    torch.manual_seed(0)
    block = Block(D, Attention(D, dtype=dtype, **options), _ffn("moe", dtype, top_k=2),
                  residual_multiplier=residual_multiplier, dtype=dtype).eval()
    _randomize_norms(block)
    steps = _compare(block, batch, dtype)
    assert ran == {"mixer": steps, "ffn": steps, "stack": 0, "model": 0}


def _attention_over_cache(dtype, head_dim, heads, cached: int, ran) -> None:
    torch.manual_seed(0)
    n_head, n_kv_head = heads
    block = Block(D, Attention(D, n_head=n_head, n_kv_head=n_kv_head, head_dim=head_dim, rope=True, dtype=dtype),
                  None, dtype=dtype).eval()
    _randomize_norms(block)
    gen = torch.Generator().manual_seed(1)
    prompt, tokens = (torch.randn(2, n, D, generator=gen).to(dtype) for n in (cached, 5))
    with torch.no_grad():
        _, state, _ = block(prompt)
    y_fast, _ = _steps(block, tokens, state, fast=True)
    y_ref, _ = _steps(block, tokens, state, fast=False)
    _assert_close(y_fast, y_ref, dtype, f"output, head_dim {head_dim}, {cached} cached")
    assert ran == {"mixer": 5, "ffn": 0, "stack": 0, "model": 0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 24, 32, 48, 64, 128, 320])
@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (8, 2), (8, 1), (6, 2)])
def test_attention_step_over_a_longer_cache_matches_unfused(dtype, head_dim, heads, ran):
    """37 cached positions and more: the scores' vector loop (LANES positions at a time) and
    its tail, the vector softmax, and the specialised query heads per KV head (1, 2, 4, 8; 3:
    the generic path) and slices of a head (24: a partial slice with 16 lanes; 48: the generic
    path; 320: more slices than the value sums' registers)."""
    _attention_over_cache(dtype, head_dim, heads, 37, ran)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [24, 32, 128])
@pytest.mark.parametrize("heads", [(4, 2), (8, 1)])
def test_attention_step_over_600_cached_positions_matches_unfused(dtype, head_dim, heads, ran):
    """600 cached positions: the scores and the softmax over many vectors of positions, and the
    value sums over blocks of 256 (VBLOCK), each adding to what the blocks before it left."""
    _attention_over_cache(dtype, head_dim, heads, 600, ran)


def test_attention_step_keeps_the_kv_cache_contract(ran):
    """The cache grows in place in the prefill's buffer; an older state stepped again is copied,
    never overwritten; left padding in kmask (a joined batch) neither counts as a position nor
    is attended to."""
    torch.manual_seed(0)
    block = Block(D, Attention(D, n_head=4, n_kv_head=2, rope=True), None).eval()
    prompt, tokens = torch.randn(2, 6, D), torch.randn(2, 3, D)
    mask = torch.tensor([[False, False, True, True, True, True], [True] * 6])  # row 0 left-padded
    with torch.no_grad():
        _, state, _ = block(prompt, None, mask)
    y_fast, s_fast = _steps(block, tokens, state, fast=True)
    assert s_fast[0].data_ptr() == state[0].data_ptr() and ran["mixer"] == 3
    y_ref, s_ref = _steps(block, tokens, state, fast=False)
    _assert_close(y_fast, y_ref, torch.float32, "output")
    for fast, ref in zip(s_fast, s_ref, strict=True):
        _assert_close(fast.float(), ref.float(), torch.float32, "state")
    y_again, _ = _steps(block, -tokens[:, :1], state, fast=True)  # another continuation of the same state
    y_other, _ = _steps(block, -tokens[:, :1], state, fast=False)
    _assert_close(y_again, y_other, torch.float32, "second continuation")
    y_first, _ = _steps(block, tokens[:, :1], state, fast=False)
    torch.testing.assert_close(y_first, y_ref[:, :1], atol=0, rtol=0)  # the first continuation's state intact


@pytest.mark.parametrize("bias", [False, True])
def test_mamba_and_mlp_biases(bias, ran):
    torch.manual_seed(0)
    block = Block(D, Mamba(D, bias=bias, conv_bias=not bias, d_conv=2), SwiGLU(D, d_hidden=40, bias=bias)).eval()
    steps = _compare(block, 2, torch.float32)
    assert ran == {"mixer": steps, "ffn": steps, "stack": 0, "model": 0}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("part", ["model", "stack"])
def test_jamba_decode_runs_as_one_call_and_equals_full_forward(batch, part, ran):
    """From token ids the whole step is one call (`model_cpu`); with the model step off, or
    from embeddings, all blocks are (`stack_cpu`)."""
    lm = jamba()
    ids = torch.randint(0, 263, (batch, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), decode_paths(fast=False):
        full = lm(ids).logits[:, 15:]
    stepped = decode_logits(lm, ids, 16) if part == "model" else without(("model",), lambda: decode_logits(lm, ids, 16))
    err = (stepped - full).abs().max().item()
    assert err < 1e-4, f"max |decode - full forward| = {err}"
    assert ran == {"mixer": 0, "ffn": 0, "stack": 0, "model": 0, part: 8}  # every step in one call


def test_a_step_from_embeddings_runs_all_blocks_in_one_call(ran):
    lm = jamba()
    ids = torch.randint(0, 263, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        state = lm.prefill(ids[:, :8]).state
        stepped = lm(inputs_embeds=lm.embed(ids[:, 8:]), state=state).logits
        with decode_paths(fast=False):
            expected = lm(ids[:, 8:], state=state).logits
    assert ran == {"mixer": 0, "ffn": 0, "stack": 1, "model": 0}
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)


def test_stack_step_equals_block_steps_in_bfloat16(ran):
    lm = jamba(torch.bfloat16)
    ids = torch.randint(0, 263, (2, 20), generator=torch.Generator().manual_seed(0))
    stacked = without(("model",), lambda: decode_logits(lm, ids, 12))
    assert ran["stack"] == 8
    blocks = without(("model", "stack"), lambda: decode_logits(lm, ids, 12))
    assert ran["mixer"] == 8 * 8 and ran["ffn"] == 8 * 8
    torch.testing.assert_close(stacked, blocks, atol=0, rtol=0)  # the same C halves in the same order


def test_stack_plan_rebinds_for_other_batch_sizes_and_a_longer_cache(ran):
    """One model's kept stack plan, stepped with 2 rows, then 1, then past the positions its
    scratch was sized for: the same logits as the per-block steps (the same C halves)."""
    lm = jamba()
    gen = torch.Generator().manual_seed(0)
    sizes = []
    for batch, prompt, steps in ((1, 250, 12), (2, 6, 3), (3, 4, 2)):
        ids = torch.randint(0, 263, (batch, prompt + steps), generator=gen)
        stacked = without(("model",), lambda ids=ids, prompt=prompt: decode_logits(lm, ids, prompt))
        plan = stack_cpu._STACKS[lm.blocks]
        sizes.append((plan.rows, plan.positions))
        blocks = without(("model", "stack"), lambda ids=ids, prompt=prompt: decode_logits(lm, ids, prompt))
        torch.testing.assert_close(stacked, blocks, atol=0, rtol=0)
    assert ran["stack"] == 12 + 3 + 2
    assert sizes[0] == (1, 512) and sizes[1][0] == 2 and sizes[2][0] == 3  # 256 positions first, then grown


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_products_on_two_threads_equal_one_thread(dtype, ran):
    """pool_cpu.c cuts each product's columns into chunks claimed by two threads: the same
    kernels on the same columns, so the same bits as one thread. The prompt is prefilled once
    on one thread (PyTorch's own matmuls may split their sums by thread count), then stepped
    on one and on two."""
    lm = jamba(dtype)
    ids = torch.randint(0, 263, (3, 16), generator=torch.Generator().manual_seed(0))
    saved = torch.get_num_threads()
    stepped = {}
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            start = lm.prefill(ids[:, :8], chunk_size=8).state
        for threads in (1, 2):
            torch.set_num_threads(threads)
            state, logits = start, []
            with torch.no_grad(), decode_paths(fast=True):
                for i in range(8, 16):
                    out = lm(ids[:, i:i + 1], state=state)
                    state = out.state
                    logits.append(out.logits)
            stepped[threads] = torch.cat(logits, 1)
    finally:
        torch.set_num_threads(saved)
    assert ran["model"] == 2 * 8
    torch.testing.assert_close(stepped[2], stepped[1], atol=0, rtol=0)


def test_a_block_the_stack_does_not_take_leaves_the_model_on_its_per_block_path(ran):
    lm = jamba()
    lm.blocks[2].mixer.impl = "ref"  # this Mamba layer's own fused step does not apply either
    ids = torch.randint(0, 263, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), decode_paths(fast=False):
        full = lm(ids).logits[:, 11:]
    stepped = decode_logits(lm, ids, 12)
    assert (stepped - full).abs().max().item() < 1e-4
    assert ran == {"mixer": 8 * 7, "ffn": 8 * 8, "stack": 0, "model": 0}


@pytest.mark.parametrize("name", ["mixer_norm.weight", "mixer.in_proj.weight", "mixer.out_proj.weight", "mixer.D",
                                  "ffn_norm.weight", "ffn.router.weight", "ffn.experts.1.down.weight",
                                  "ffn.experts.2.gate.weight"])
@pytest.mark.parametrize("how", ["in_place", "new_storage"])
def test_fused_step_follows_changed_parameters(name, how, ran):
    torch.manual_seed(0)
    block = Block(D, Mamba(D), MoE(D, n_experts=4, top_k=4, d_hidden=32)).eval()  # top_k 4: every expert counts
    state = tuple(torch.randn_like(t) for t in block.mixer.init_state(2))
    x = torch.randn(2, 1, D)
    p = block.get_parameter(name)
    with torch.no_grad():
        before = block(x, state)[0]
        if how == "in_place":
            p.mul_(1.5).add_(0.1)
        else:
            p.data = p.data * 1.5 + 0.1
        after = block(x, state)[0]
        with decode_paths(fast=False):
            expected = block(x, state)[0]
    assert ran == {"mixer": 2, "ffn": 2, "stack": 0, "model": 0}
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["blocks.0.mixer_norm.weight", "blocks.0.mixer.in_proj.weight", "blocks.2.mixer.A_log",
                                  "blocks.2.mixer.dt_proj.bias", "blocks.4.mixer.k_proj.weight",
                                  "blocks.4.ffn_norm.weight", "blocks.5.ffn.router.weight",
                                  "blocks.7.ffn.experts.3.up.weight", "blocks.6.ffn.down.weight", "norm.weight",
                                  "lm_head.weight"])
@pytest.mark.parametrize("how", ["in_place", "new_storage", "new_parameter", "new_module"])
def test_stack_step_follows_changed_parameters_and_modules(name, how, ran):
    lm = jamba()
    ids = torch.randint(0, 263, (2, 14), generator=torch.Generator().manual_seed(0))
    before = decode_logits(lm, ids, 12)
    owner_name, _, leaf = name.rpartition(".")
    owner = lm.get_submodule(owner_name)
    with torch.no_grad():
        p = owner.get_parameter(leaf)
        changed = p * 1.5 + 0.1 if p.dim() == 1 else p + 0.05 * torch.randn_like(p)
        if how == "in_place":
            p.copy_(changed)
        elif how == "new_storage":
            p.data = changed.clone()
        elif how == "new_parameter":
            setattr(owner, leaf, torch.nn.Parameter(changed.clone()))
        else:  # the module holding it replaced by a copy with the changed value
            parent_name, _, child = owner_name.rpartition(".")
            replacement = copy.deepcopy(owner)
            replacement.get_parameter(leaf).copy_(changed)
            setattr(lm.get_submodule(parent_name), child, replacement)
            del owner, p
            gc.collect()
    after = decode_logits(lm, ids, 12)
    with torch.no_grad(), decode_paths(fast=False):
        expected = lm(ids).logits[:, 11:]
    assert ran["model"] == 2 * 2
    assert not torch.allclose(before, after)
    err = (after - expected).abs().max().item()
    assert err < 1e-4, f"after changing {name} ({how}): max |stack decode - full forward| = {err}"


def _full_checks(monkeypatch) -> list:
    """Calls of the stack plan's signature: once per full check (the start of a chain)."""
    calls = []
    signature = stack_cpu._signature
    monkeypatch.setattr(stack_cpu, "_signature", lambda blocks: calls.append(1) or signature(blocks))
    return calls


def test_a_chain_of_steps_is_checked_once_and_a_branch_again(monkeypatch, ran):
    """Steps from the state the previous step returned reuse the plan unchecked; stepping a
    state that is not the last one returned (a branch, a copy) checks again, with the same
    logits as the per-block path."""
    lm = jamba()
    checks = _full_checks(monkeypatch)
    ids = torch.randint(0, 263, (2, 14), generator=torch.Generator().manual_seed(0))
    decode_logits(lm, ids, 6)
    assert ran["model"] == 8 and len(checks) == 1
    with torch.no_grad():
        state = lm.prefill(ids[:, :6]).state
        first = lm(ids[:, 6:7], state=state)
        again = lm(ids[:, 6:7], state=state)  # a branch from the prefill's state
        copied = lm(ids[:, 7:8], state=tuple(tuple(t.clone() for t in layer) for layer in first.state))
        with decode_paths(fast=False):
            expected = lm(ids[:, 7:8], state=first.state)
    assert len(checks) == 1 + 3
    torch.testing.assert_close(again.logits, first.logits, atol=0, rtol=0)
    torch.testing.assert_close(copied.logits, expected.logits, atol=1e-5, rtol=1e-5)


def test_a_chain_is_checked_again_for_another_input_dtype_or_thread_count(monkeypatch, ran):
    lm = jamba()
    checks = _full_checks(monkeypatch)
    ids = torch.randint(0, 263, (1, 10), generator=torch.Generator().manual_seed(0))
    saved = torch.get_num_threads()
    try:
        with torch.no_grad():
            state = lm.prefill(ids[:, :6]).state
            torch.set_num_threads(1)
            state = lm(ids[:, 6:7], state=state).state
            torch.set_num_threads(2)
            state = lm(ids[:, 7:8], state=state).state
            state = lm(ids[:, 8:9], state=state).state
    finally:
        torch.set_num_threads(saved)
    assert ran["model"] == 3 and len(checks) == 2


def test_within_a_chain_weights_updated_in_place_are_read_live(ran):
    """(Mamba's own small weights excepted: the step keeps float32 copies of them.)"""
    lm = jamba()
    ids = torch.randint(0, 263, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        state = lm.prefill(ids[:, :6]).state
        state = lm(ids[:, 6:7], state=state).state
        for p in (lm.blocks[1].mixer.in_proj.weight, lm.blocks[4].mixer.q_proj.weight, lm.blocks[3].ffn_norm.weight):
            p.mul_(1.25)
    fused, expected = fast_and_generic(lm, ids[:, 7:8], state)
    assert ran["model"] == 2
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)


def test_a_storage_swapped_within_a_chain_is_not_read_after_it_is_freed(ran):
    """The plan holds every weight's storage: the chain keeps computing with the old values
    (the new ones apply from the next chain) and never reads freed memory."""
    lm = jamba()
    ids = torch.randint(0, 263, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        state = lm.prefill(ids[:, :6]).state
        state = lm(ids[:, 6:7], state=state).state
        reference = copy.deepcopy(lm)
        weight = lm.blocks[0].mixer.in_proj.weight
        weight.data = torch.randn_like(weight)
        gc.collect()
        torch.randn(weight.shape)  # likely to reuse the freed block, were it not held
        stale = lm(ids[:, 7:8], state=state).logits
        with decode_paths(fast=False):
            expected = reference(ids[:, 7:8], state=state).logits
    torch.testing.assert_close(stale, expected, atol=1e-5, rtol=1e-5)


def test_fused_steps_follow_changed_settings(ran):
    torch.manual_seed(0)
    block = Block(D, Attention(D, n_head=4, rope=True), MoE(D, n_experts=4, top_k=2, d_hidden=32)).eval()
    prompt, x = torch.randn(2, 5, D), torch.randn(2, 1, D)
    with torch.no_grad():
        _, state, _ = block(prompt)
        block(x, state)
        block.ffn.top_k, block.ffn.normalize_top_k, block.ffn_norm.eps = 1, True, 1e-2
        block.mixer.rope_theta, block.mixer_norm.eps = 50.0, 1e-3
        fused = block(x, state)[0]
        with decode_paths(fast=False):
            expected = block(x, state)[0]
    assert ran == {"mixer": 2, "ffn": 2, "stack": 0, "model": 0}
    _assert_close(fused, expected, torch.float32, "output after changing top_k, eps and rope_theta")


class _ScaledMLP(SwiGLU):
    """A subclass computing something else: a fused step must not take it for a SwiGLU."""

    def forward(self, x):
        y, aux = super().forward(x)
        return 2 * y, aux


def _unsupported():
    """(name, block, state or None, mask or None, batch, what should still be fused)"""
    torch.manual_seed(0)
    mamba_mlp = Block(D, Mamba(D), SwiGLU(D, d_hidden=32)).eval()
    yield "padding mask", mamba_mlp, True, torch.ones(2, 1, dtype=torch.bool), 2, {"mixer": 0, "ffn": 1}
    yield "no state", mamba_mlp, False, None, 2, {"mixer": 0, "ffn": 1}
    attention = Block(D, Attention(D, n_head=4), None).eval()
    yield "attention, no cache", attention, False, None, 2, {"mixer": 0, "ffn": 0}
    yield "attention, padding mask", attention, True, torch.ones(2, 1, dtype=torch.bool), 2, {"mixer": 0, "ffn": 0}
    yield f"{block_cpu.gemv_cpu.MAX_ROWS + 1} rows", mamba_mlp, True, None, block_cpu.gemv_cpu.MAX_ROWS + 1, \
        {"mixer": 0, "ffn": 0}
    yield "reference scan", Block(D, Mamba(D, impl="ref"), None).eval(), True, None, 2, {"mixer": 0, "ffn": 0}
    yield "mamba2", Block(D, Mamba2(D, d_state=16, headdim=16), None).eval(), True, None, 1, {"mixer": 0, "ffn": 0}
    yield "subclassed mlp", Block(D, None, _ScaledMLP(D, d_hidden=32)).eval(), False, None, 1, {"mixer": 0, "ffn": 0}
    yield "float64", Block(D, Mamba(D, dtype=torch.float64), SwiGLU(D, dtype=torch.float64),
                           dtype=torch.float64).eval(), True, None, 1, {"mixer": 0, "ffn": 0}


@pytest.mark.parametrize("case", list(_unsupported()), ids=lambda case: case[0])
def test_unsupported_configs_take_the_unfused_path(case, ran):
    _, block, with_state, mask, batch, fused = case
    dtype = block.mixer_norm.weight.dtype if block.mixer_norm is not None else block.ffn_norm.weight.dtype
    state = block.mixer.init_state(batch, dtype=dtype) if with_state else None
    x = torch.randn(batch, 1, D, dtype=dtype)
    with torch.no_grad():
        y, _, _ = block(x, state, mask)
        with decode_paths(fast=False):
            ref, _, _ = block(x, state, mask)
    assert ran == {**fused, "stack": 0, "model": 0}
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_nothing_fused_with_gradients_in_generic_mode_or_blocks_off(ran):
    torch.manual_seed(0)
    block = Block(D, Mamba(D), MoE(D, n_experts=4, top_k=2, d_hidden=32)).eval()
    state, x = block.mixer.init_state(1), torch.randn(1, 1, D)
    block(x, state)  # gradients enabled: training's path
    with torch.no_grad(), decode_paths(fast=False):
        block(x, state)
    with torch.no_grad(), decode_paths(fast=True, blocks=False):  # the fast path without block steps
        block(x, state)
    assert ran == {"mixer": 0, "ffn": 0, "stack": 0, "model": 0}
