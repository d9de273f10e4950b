"""The whole decode step of a `HybridLM` in one C call (`plugins/mixers/model_cpu`).

From token ids to logits: the embedding (times its multiplier), every block (`stack_cpu`),
the final norm and the LM head (times the logits multiplier). Against the stack step, whose
ends run as torch ops (the same C halves; the final norm sums in another order), and the
general forward; ends or ids it does not take leave the step to the stack.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _decode_fixtures import decode_logits, fast_and_generic, jamba, spy_steps, without

from hybrid_mllm.core.decode import decode_paths
from hybrid_mllm.core.model import HybridLM
from hybrid_mllm.plugins.mixers import block_cpu

pytestmark = pytest.mark.skipif(block_cpu.available(torch.float32) is not None,
                                reason=str(block_cpu.available(torch.float32)))

VOCAB = 263  # jamba-small's


@pytest.fixture
def ran(monkeypatch):
    return spy_steps(monkeypatch)


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


SCALED_ENDS = {"tie_embeddings": False, "embedding_multiplier": 3.0, "logits_multiplier": 0.25}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ends", [{}, SCALED_ENDS])
@pytest.mark.parametrize("batch", [1, 3])
def test_model_step_equals_the_stack_step_and_the_full_forward(dtype, ends, batch, ran):
    lm = jamba(dtype, **ends)
    ids = _ids(batch, 20)
    whole = decode_logits(lm, ids, 12)
    assert ran["model"] == 8 and ran["stack"] == 0
    stacked = without(("model",), lambda: decode_logits(lm, ids, 12))
    assert ran["stack"] == 8
    assert whole.dtype == stacked.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(whole, stacked, atol=tol, rtol=tol)
    if dtype == torch.float32:
        with torch.no_grad(), decode_paths(fast=False):
            full = lm(ids).logits[:, 11:]
        assert (whole - full).abs().max().item() < 1e-4


def test_rows_change_between_chains(ran):
    """One model stepped with 1, then 3, then 2 rows: its buffers follow, the logits too."""
    lm = jamba()
    for batch, seed in ((1, 0), (3, 1), (2, 2)):
        ids = _ids(batch, 10, seed)
        whole = decode_logits(lm, ids, 6)
        stacked = without(("model",), lambda ids=ids: decode_logits(lm, ids, 6))
        torch.testing.assert_close(whole, stacked, atol=1e-5, rtol=1e-5)
    assert ran["model"] == 3 * 4


@pytest.mark.parametrize("bad", [VOCAB, -1, 10**9])
def test_an_id_outside_the_embedding_raises_and_the_state_still_steps(bad, ran):
    lm = jamba()
    ids = _ids(2, 8)
    with torch.no_grad():
        state = lm.prefill(ids[:, :6]).state
        kept = [t.clone() for layer in state for t in layer]
        with pytest.raises(IndexError, match=f"token id {bad} is out of range: the embedding has {VOCAB} rows"):
            lm(torch.tensor([[3], [bad]]), state=state)
        assert all(torch.equal(a, b) for a, b in zip(kept, [t for layer in state for t in layer], strict=True))
    stepped, expected = fast_and_generic(lm, ids[:, 6:7], state)
    assert ran["model"] == 2
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)


def test_a_step_that_fails_within_a_chain_leaves_the_chain_to_start_again(ran):
    """The failed step had pointed the Mamba halves at new states it then dropped: the retry
    from the same state must read that state, not the dropped one."""
    lm = jamba()
    ids = _ids(1, 9)
    with torch.no_grad():
        state = lm(ids[:, 7:8], state=lm.prefill(ids[:, :7]).state).state  # a chain of one step
        with pytest.raises(IndexError):
            lm(torch.tensor([[VOCAB]]), state=state)
    stepped, expected = fast_and_generic(lm, ids[:, 8:9], state)
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)


def test_threads_stepping_one_model_from_one_state_get_its_next_logits():
    """Each thread's step reads the state it was given, whatever another thread stepped meanwhile."""
    import threading

    lm = jamba()
    ids = _ids(1, 8)
    with torch.no_grad():
        state = lm(ids[:, 6:7], state=lm.prefill(ids[:, :6]).state).state
        expected = lm(ids[:, 7:8], state=state).logits
    results, start = [], threading.Barrier(4)

    def step():
        start.wait()
        with torch.no_grad():
            for _ in range(20):
                results.append(lm(ids[:, 7:8], state=state).logits)

    threads = [threading.Thread(target=step) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80
    for logits in results:
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def _biased_head(lm: HybridLM) -> None:
    head = torch.nn.Linear(lm.lm_head.in_features, lm.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(lm.lm_head.weight)
        head.bias.normal_()
    lm.lm_head = head


def _max_norm_embedding(lm: HybridLM) -> None:
    lm.embed.max_norm = 0.5


class _LoggingLM(HybridLM):
    pass


def _subclass(lm: HybridLM) -> None:
    lm.__class__ = _LoggingLM


def _layer_norm(lm: HybridLM) -> None:
    lm.norm = torch.nn.LayerNorm(lm.lm_head.in_features)


@pytest.mark.parametrize("change", [_biased_head, _max_norm_embedding, _subclass, _layer_norm])
def test_ends_it_does_not_compute_leave_the_step_to_the_stack(change, ran):
    lm = jamba(tie_embeddings=False)
    change(lm)
    ids = _ids(2, 10)
    stepped = decode_logits(lm, ids, 6)
    assert ran["model"] == 0 and ran["stack"] == 4
    with torch.no_grad(), decode_paths(fast=False):
        full = lm(ids).logits[:, 5:]
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-4)


def test_int32_ids_take_the_stack(ran):
    lm = jamba()
    ids = _ids(1, 8)
    with torch.no_grad():
        state = lm.prefill(ids[:, :7]).state
        stepped = lm(ids[:, 7:].int(), state=state).logits
        whole = lm(ids[:, 7:], state=state).logits
    assert ran["stack"] == 1 and ran["model"] == 1
    torch.testing.assert_close(stepped, whole, atol=1e-5, rtol=1e-5)


def test_a_model_copy_gets_its_own_plan(ran):
    """Plans are per model: a deep copy with other end weights steps with its own."""
    lm = jamba()
    other = copy.deepcopy(lm)
    with torch.no_grad():
        other.norm.weight.mul_(2.0)
    ids = _ids(1, 8)
    mine, theirs = decode_logits(lm, ids, 6), decode_logits(other, ids, 6)
    with torch.no_grad(), decode_paths(fast=False):
        expected = other(ids).logits[:, 5:]
    assert not torch.allclose(mine, theirs)
    assert (theirs - expected).abs().max().item() < 1e-4
    assert ran["model"] == 2 * 2
