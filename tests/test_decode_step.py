"""The one-token decode paths (`hybrid_mllm.core.decode`) against the general forward.

Mamba's fused C step against its eager step, attention's in-place KV cache, MoE's direct
expert loop, bf16 against fp32, and a batch stepping together against one sequence at a time.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.decode import decode_paths, fast_decode, linear
from hybrid_mllm.core.ffn import MoE
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.plugins.mixers import gemv_cpu, kv_cache, step_cpu
from hybrid_mllm.plugins.mixers.attention import Attention
from hybrid_mllm.plugins.mixers.mamba import Mamba
from hybrid_mllm.runtime.generate import GenerationConfig, TorchDecoder, generate
from hybrid_mllm.serve.slots import join, state_specs

needs_gemv = pytest.mark.skipif(gemv_cpu.available() is not None, reason=str(gemv_cpu.available()))
needs_step = pytest.mark.skipif(step_cpu.available() is not None, reason=str(step_cpu.available()))
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _steps(mixer, x: torch.Tensor, state, *, fast: bool) -> tuple[torch.Tensor, tuple]:
    """Feed x (B, L, d) one token at a time from `state`; -> (B, L, d) outputs, last state."""
    ys = []
    with torch.no_grad(), decode_paths(fast=fast):
        for t in range(x.shape[1]):
            y, state = mixer(x[:, t:t + 1], state)
            ys.append(y)
    return torch.cat(ys, 1), state


def _jamba(dtype=torch.float32):
    return build_model(load_config(resolve_config_path("jamba-small")), seed=0, dtype=dtype).eval()


def test_fast_decode_is_off_with_gradients_and_in_generic_mode():
    with torch.no_grad():
        assert fast_decode()
        with decode_paths(fast=False):
            assert not fast_decode()
    assert not fast_decode()  # gradients enabled: training takes the general forward


@needs_gemv
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 1024, 256), (3, 4097, 1000), (16, 6, 33), (2, 1 << 18, 8)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_few_row_linear_kernel_matches_float64_matmul(rows, n, k, threads, dtype):
    """Against the float64 product of the same values: bf16 within the one rounding to bf16 of
    the output (torch's own bf16 linear is no closer), float32 within float32 accumulation."""
    if gemv_cpu.available(dtype) is not None:
        pytest.skip(gemv_cpu.available(dtype))
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen).to(dtype) for shape in ((rows, k), (n, k), (n,)))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for bias in (b, None):
            ref = x.double() @ w.double().t() + (0 if bias is None else bias.double())
            y = gemv_cpu.linear_few_rows(x, w, bias)
            assert y.dtype == dtype and y.shape == (rows, n)
            if dtype == torch.bfloat16:
                err = ((y.double() - ref).abs() / (ref.abs() + 1e-3)).max().item()
                assert err <= 2**-8, f"relative error {err} (bf16 rounding is 2^-9)"
            else:  # error of a K-term float32 sum: ~sqrt(K) * 2^-24 * |x| |w|
                bound = 1e-6 * k**0.5 * (x.double().abs() @ w.double().abs().t()) + 1e-6
                assert ((y.double() - ref).abs() <= bound).all()
    finally:
        torch.set_num_threads(saved)


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_linear_uses_the_registered_kernel_only_when_decoding(monkeypatch, dtype):
    from hybrid_mllm.core import decode

    assert gemv_cpu.CPU_FEW_ROWS in decode._linear_kernels()  # registered through register_linear_kernels
    calls = []
    spy = dataclasses.replace(gemv_cpu.CPU_FEW_ROWS, fn=lambda *a: calls.append(1) or gemv_cpu.linear_few_rows(*a))
    monkeypatch.setattr(decode, "_linear_kernels", lambda: (spy,))
    x, w = torch.randn(2, 64).to(dtype), torch.randn(32, 64).to(dtype)
    with torch.no_grad():
        fast = linear(x, w)
        assert calls == [1]
        with decode_paths(fast=False):
            generic = linear(x, w)
    linear(x, w)  # gradients enabled: torch's
    assert calls == [1]
    tol = {"atol": 0.05, "rtol": 0.01} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(fast.float(), generic.float(), **tol)
    assert not gemv_cpu.accepts(torch.randn(gemv_cpu.MAX_ROWS + 1, 64).to(dtype), w, None)
    assert not gemv_cpu.accepts(x.double(), w.double(), None)  # no float64 kernel: torch's
    assert not gemv_cpu.accepts(x, w.t(), None)  # a transposed weight: torch's


@needs_step
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", [{}, {"inner_norms": True}, {"d_conv": 2, "conv_bias": False, "d_state": 8}])
def test_fused_mamba_step_matches_eager_step(dtype, options, monkeypatch):
    torch.manual_seed(0)
    mamba = Mamba(48, dt_rank=5, dtype=dtype, **options).eval()
    prompt, tokens = torch.randn(3, 7, 48, dtype=dtype), torch.randn(3, 6, 48, dtype=dtype)
    with torch.no_grad():
        _, state = mamba(prompt)
    calls = []
    fused = step_cpu.mamba_step_cpu
    monkeypatch.setattr(step_cpu, "mamba_step_cpu", lambda *a: calls.append(1) or fused(*a))
    y_fast, s_fast = _steps(mamba, tokens, state, fast=True)
    assert len(calls) == tokens.shape[1]  # the fused step ran, not the eager one
    y_ref, s_ref = _steps(mamba, tokens, state, fast=False)
    scale = y_ref.abs().max().item()
    err = (y_fast.float() - y_ref.float()).abs().max().item()
    assert err <= TOL[dtype] * scale, f"max |fused - eager| = {err} (outputs up to {scale})"
    assert s_fast[0].dtype == dtype and s_fast[1].dtype == torch.float32  # the SSM state stays float32
    for fast, ref in zip(s_fast, s_ref, strict=True):
        err = (fast.float() - ref.float()).abs().max().item()
        assert err <= TOL[dtype] * max(ref.abs().max().item(), 1.0), f"state differs by {err}"


@needs_step
@pytest.mark.parametrize("name", ["D", "A_log", "conv_weight", "conv_bias", "x_proj.weight", "dt_proj.weight",
                                  "dt_proj.bias", "dt_norm.weight", "C_norm.weight"])
def test_fused_step_follows_changed_weights(name):
    torch.manual_seed(0)
    mamba = Mamba(32, inner_norms=True).eval()
    state = tuple(torch.randn_like(t) for t in mamba.init_state(2))
    x = torch.randn(2, 1, 32)
    with torch.no_grad():
        before, _ = mamba(x, state)
        mamba.get_parameter(name).mul_(1.5).add_(0.1)  # in place: same storage, new version
        after, _ = mamba(x, state)
        with decode_paths(fast=False):
            expected, _ = mamba(x, state)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_is_written_in_place_and_old_states_stay_valid(dtype):
    torch.manual_seed(0)
    attn = Attention(64, n_head=4, n_kv_head=2, dtype=dtype).eval()
    prompt, tokens = torch.randn(2, 9, 64, dtype=dtype), torch.randn(2, 4, 64, dtype=dtype)
    with torch.no_grad():
        _, state = attn(prompt)
    y_fast, s_fast = _steps(attn, tokens, state, fast=True)
    y_ref, s_ref = _steps(attn, tokens, state, fast=False)
    torch.testing.assert_close(y_fast, y_ref, atol=TOL[dtype], rtol=TOL[dtype])
    for fast, ref in zip(s_fast, s_ref, strict=True):
        torch.testing.assert_close(fast, ref, atol=TOL[dtype], rtol=TOL[dtype])
    assert s_fast[0].data_ptr() == state[0].data_ptr()  # the prefill's buffer, extended in place
    # an older state stepped again (another continuation) is copied, not overwritten
    y_again, _ = _steps(attn, -tokens[:, :1], state, fast=True)
    y_other, _ = _steps(attn, -tokens[:, :1], state, fast=False)
    torch.testing.assert_close(y_again, y_other, atol=TOL[dtype], rtol=TOL[dtype])
    y_first, _ = _steps(attn, tokens[:, :1], state, fast=False)
    torch.testing.assert_close(y_first, y_ref[:, :1], atol=0, rtol=0)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_kv_append_grows_its_buffer_and_copies_foreign_tensors(mode):
    with mode():
        _check_kv_append()


def _check_kv_append():
    past = torch.randn(1, 2, 3, 4)
    grown = kv_cache.append(past, torch.randn(1, 2, 1, 4), 2)
    assert grown.shape == (1, 2, 4, 4) and grown.data_ptr() != past.data_ptr()
    assert torch.equal(grown[:, :, :3], past)
    room = grown._kv_buffer.shape[2] - grown.shape[2]
    assert room >= kv_cache.MIN_ROOM
    ptr = grown.data_ptr()
    for _ in range(room):
        grown = kv_cache.append(grown, torch.zeros(1, 2, 1, 4), 2)
    assert grown.data_ptr() == ptr  # filled the room in place
    grown = kv_cache.append(grown, torch.ones(1, 2, 1, 4), 2)
    assert grown.data_ptr() != ptr and torch.equal(grown[:, :, :3], past) and grown[:, :, -1].eq(1).all()


@pytest.mark.parametrize("tokens", [1, 2, 7])
def test_moe_decode_path_matches_general_path(tokens):
    torch.manual_seed(0)
    moe = MoE(32, n_experts=4, top_k=2, d_hidden=48).eval()
    x = torch.randn(1, tokens, 32)
    with torch.no_grad():
        fast, aux_fast = moe(x)
        with decode_paths(fast=False):
            ref, aux_ref = moe(x)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)
    if tokens * moe.top_k <= moe.n_experts:  # the few-token path: no aux loss (it only trains the router)
        assert aux_fast.item() == 0.0 and aux_ref.item() > 0.0
    else:
        torch.testing.assert_close(aux_fast, aux_ref)


def _decode(lm, prompt: torch.Tensor, next_ids: torch.Tensor, *, fast: bool) -> torch.Tensor:
    """Logits (B, n, vocab) float32 after `prompt` and after each of `next_ids` (B, n - 1) fed in turn."""
    with torch.no_grad(), decode_paths(fast=fast):
        out = lm.prefill(prompt, chunk_size=16)
        state, logits = out.state, [out.logits[:, -1].float()]
        for i in range(next_ids.shape[1]):
            out = lm(next_ids[:, i:i + 1], state=state)
            state = out.state
            logits.append(out.logits[:, -1].float())
    return torch.stack(logits, 1)


def test_model_decode_step_equals_full_forward():
    lm = _jamba()
    ids = torch.randint(0, 263, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), decode_paths(fast=False):
        full = lm(ids).logits[:, 29:].float()
    stepped = _decode(lm, ids[:, :30], ids[:, 30:], fast=True)
    err = (stepped - full).abs().max().item()
    assert err < 1e-4, f"max |decode - full forward| = {err}"


def test_bfloat16_decode_tracks_float32():
    """bf16 weights and activations (scan state float32), teacher-forced on the fp32 model's
    greedy tokens: logits close, greedy picks mostly the same, and the fast path no less
    accurate than the general bf16 path."""
    lm32, lm16 = _jamba(), _jamba(torch.bfloat16)
    lm16.load_state_dict(lm32.state_dict())
    prompt = torch.randint(0, 263, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        greedy = generate(TorchDecoder(lm32), lm32.embed(prompt), torch.ones_like(prompt, dtype=torch.bool),
                          GenerationConfig(max_new_tokens=32)).tokens
    forced = torch.tensor(greedy)[:, :-1]
    ref = _decode(lm32, prompt, forced, fast=True)
    fast, generic = _decode(lm16, prompt, forced, fast=True), _decode(lm16, prompt, forced, fast=False)
    err_fast, err_generic = ((t - ref).abs().amax(-1) for t in (fast, generic))  # (1, 32) per step
    spread = ref.std().item()
    assert err_fast.median().item() < 0.2 * spread, f"median bf16 error {err_fast.median():.4f}, logit std {spread:.3f}"
    assert err_fast.median().item() < 2 * err_generic.median().item() + 1e-3
    agree = (fast.argmax(-1) == torch.tensor(greedy)).float().mean().item()
    assert agree >= 0.75, f"bf16 greedy agrees with fp32 on {agree:.0%} of 32 steps"


def test_batched_decode_equals_one_sequence_at_a_time():
    """Three prompts of different lengths prefilled apart, joined as the server's slot table
    joins them, stepped together: the same logits as each stepped alone."""
    lm = _jamba()
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 263, (1, n), generator=gen) for n in (5, 17, 11)]
    tokens = torch.randint(0, 263, (3, 6), generator=gen)
    with torch.no_grad():
        alone = [_decode(lm, p, tokens[i:i + 1], fast=True) for i, p in enumerate(prompts)]
        batch = None
        for p in prompts:
            batch = join(batch, lm.prefill(p).state, state_specs(lm))
        together = []
        for i in range(tokens.shape[1]):
            out = lm(tokens[:, i:i + 1], state=batch)
            batch = out.state
            together.append(out.logits[:, -1])
    together = torch.stack(together, 1)
    for i in range(3):
        err = (together[i] - alone[i][0, 1:]).abs().max().item()
        assert err < 1e-4, f"sequence {i}: batched differs from alone by {err}"


def test_cli_entries_choose_passive_openmp_waiting_before_torch_loads():
    code = ("import os, sys; from hybrid_mllm.core.openmp import prefer_passive_wait; "
            "first = prefer_passive_wait(); import torch; print(first, prefer_passive_wait(), os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["True", "False", "PASSIVE"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"}).stdout
    assert out.split() == ["True", "False", "ACTIVE"]  # the user's setting wins
