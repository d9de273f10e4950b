"""Every SSD kernel available on the CPU matches the reference, forward and backward; the dispatch."""

import pytest
import torch

from hybrid_mllm.core.errors import KernelUnavailableError, RegistryError
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.ssd import auto_kernel_name, ssd_scan
from hybrid_mllm.testing import (
    SSD_CASES,
    SSD_EDGE_CHECKS,
    check_ssd_gradients,
    check_ssd_matches_ref,
    check_ssd_nan,
)
from hybrid_mllm.testing.ssd_contract import ssd_inputs

REG = get_registry()
CPU_KERNELS = [n for n in REG.names("ssd_kernel")
               if "cpu" in REG.get("ssd_kernel", n).priority and REG.get("ssd_kernel", n).available(torch.device("cpu")) is None]


def _call(inputs: dict, impl: str):
    return ssd_scan(**inputs, impl=impl)


@pytest.mark.parametrize("case", SSD_CASES, ids=str)
@pytest.mark.parametrize("name", [n for n in CPU_KERNELS if n != "ref"])
def test_matches_ref(name, case):
    check_ssd_matches_ref(REG.get("ssd_kernel", name).fn, case)


@pytest.mark.parametrize("case", SSD_CASES[:5], ids=str)
@pytest.mark.parametrize("name", [n for n in CPU_KERNELS if n != "ref"])
def test_gradients_match_ref(name, case):
    check_ssd_gradients(REG.get("ssd_kernel", name).fn, case)


@pytest.mark.parametrize("check", SSD_EDGE_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", CPU_KERNELS)
def test_edge_cases(name, check):
    check(REG.get("ssd_kernel", name).fn)


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_a_nan_spoils_no_earlier_output(name):
    check_ssd_nan(REG.get("ssd_kernel", name).fn)


def test_ref_matches_closed_form():
    """One head, P = N = 1, constant inputs: h_t = sum_k exp(dt A)^k dt x B, computed by hand."""
    L, dt, A, b = 5, 0.5, -1.0, 2.0
    y, h = ssd_scan(torch.ones(1, L, 1, 1), torch.full((1, L, 1), dt), torch.tensor([A]),
                    torch.full((1, L, 1, 1), b), torch.ones(1, L, 1, 1), impl="ref")
    a = torch.exp(torch.tensor(dt * A))
    expected = torch.tensor([sum(a**k * dt * b for k in range(t + 1)) for t in range(L)])
    torch.testing.assert_close(y[0, :, 0, 0], expected)
    torch.testing.assert_close(h[0, 0, 0, 0], expected[-1])


def test_groups_are_read_by_their_heads():
    """Head h reads group h // (H // G): the grouped call equals the call with B, C repeated per head."""
    inputs = ssd_inputs(1, 9, 6, 2, 3, 4, True, True)
    y, h = _call(inputs, "chunked")
    per_head = {**inputs, "B": inputs["B"].repeat_interleave(2, 2), "C": inputs["C"].repeat_interleave(2, 2)}
    y1, h1 = _call(per_head, "ref")
    torch.testing.assert_close(y, y1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h1, atol=1e-5, rtol=1e-5)


def test_chunked_is_stable_with_strong_decay():
    """Log-decays of -400 per token must not overflow to inf / NaN."""
    inputs = ssd_inputs(1, 40, 4, 4, 1, 4, True, False, 16)
    inputs["dt"] = torch.full_like(inputs["dt"], 100.0)
    y, h = _call(inputs, "chunked")
    y_ref, h_ref = _call(inputs, "ref")
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(h, h_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_bf16_inputs_give_bf16_output(name):
    inputs = ssd_inputs(1, 9, 4, 4, 2, 4, True, True, 4, dtype=torch.bfloat16)
    y, h = _call(inputs, name)
    y_ref, _ = _call({k: v.float() if torch.is_tensor(v) else v for k, v in inputs.items()}, "ref")
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref, atol=3e-2, rtol=3e-2)


def test_chunk_size_does_not_change_the_result():
    inputs = ssd_inputs(1, 50, 4, 4, 2, 8, True, True)
    results = [_call({**inputs, "chunk_size": q}, "chunked") for q in (1, 7, 16, 64)]
    for y, h in results[1:]:
        torch.testing.assert_close(y, results[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h, results[0][1], atol=1e-5, rtol=1e-5)


def test_auto_resolves_on_cpu():
    assert auto_kernel_name("cpu") in CPU_KERNELS


def test_unknown_kernel_suggests_a_name():
    with pytest.raises(RegistryError, match="Did you mean 'chunked'"):
        _call(ssd_inputs(1, 3, 2, 2, 1, 2, False, False), "chunkd")


def test_kernel_on_a_device_it_does_not_run_on():
    name = next((n for n in REG.names("ssd_kernel") if "cpu" not in REG.get("ssd_kernel", n).priority), None)
    if name is None:
        pytest.skip("every registered SSD kernel runs on the CPU")
    with pytest.raises(KernelUnavailableError, match=f"'{name}' does not run on cpu"):
        _call(ssd_inputs(1, 3, 2, 2, 1, 2, False, False), name)


@pytest.mark.parametrize(("field", "change", "expected"), [
    ("dt", lambda t: t[..., :1], "dt has shape"),
    ("A", lambda t: t[:1], "A has shape"),
    ("C", lambda t: t[:, :, :, :1], "C has shape"),
    ("state", lambda t: t[:, :, :1], "state has shape"),
])
def test_bad_shapes_name_the_argument(field, change, expected):
    inputs = ssd_inputs(1, 3, 4, 2, 2, 3, True, True)
    inputs[field] = change(inputs[field])
    with pytest.raises(ValueError, match=expected):
        _call(inputs, "chunked")
