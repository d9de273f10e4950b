"""Every scan kernel available on the CPU matches the reference, forward and backward."""

import pytest
import torch

from hybrid_mllm.core.errors import KernelUnavailableError, RegistryError
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.scan import auto_kernel_name, selective_scan
from hybrid_mllm.testing import SCAN_CASES, SCAN_EDGE_CHECKS, check_scan_gradients, check_scan_matches_ref
from hybrid_mllm.testing.scan_contract import scan_inputs

REG = get_registry()
CPU_KERNELS = [n for n in REG.names("scan_kernel")
               if "cpu" in REG.get("scan_kernel", n).priority and REG.get("scan_kernel", n).available(torch.device("cpu")) is None]


@pytest.mark.parametrize("case", SCAN_CASES, ids=str)
@pytest.mark.parametrize("name", [n for n in CPU_KERNELS if n != "ref"])
def test_matches_ref(name, case):
    check_scan_matches_ref(REG.get("scan_kernel", name).fn, case)


@pytest.mark.parametrize("case", SCAN_CASES[:4], ids=str)
@pytest.mark.parametrize("name", [n for n in CPU_KERNELS if n != "ref"])
def test_gradients_match_ref(name, case):
    check_scan_gradients(REG.get("scan_kernel", name).fn, case)


@pytest.mark.parametrize("check", SCAN_EDGE_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", CPU_KERNELS)
def test_edge_cases(name, check):
    check(REG.get("scan_kernel", name).fn)


def test_ref_matches_closed_form():
    """One channel, one state, constant inputs: h_t = sum_k a^k b u, computed by hand."""
    L, a_log, b = 5, -0.5, 2.0
    u = torch.ones(1, 1, L)
    y, h = selective_scan(u, torch.ones(1, 1, L), torch.tensor([[a_log]]), torch.full((1, 1, L), b),
                          torch.ones(1, 1, L), impl="ref")
    a = torch.exp(torch.tensor(a_log))
    expected = torch.tensor([sum(a**k * b for k in range(t + 1)) for t in range(L)])
    torch.testing.assert_close(y[0, 0], expected)
    torch.testing.assert_close(h[0, 0, 0], expected[-1])


def test_chunked_is_stable_with_strong_decay():
    """Large delta * |A| (log-decays of -1000 per token) must not overflow to inf/NaN."""
    inputs = scan_inputs(1, 4, 4, 40, True, False, False)
    inputs["delta"] = inputs["delta"].abs() * 0 + 100.0
    inputs["softplus"] = False
    y, h = selective_scan(**inputs, impl="chunked")
    y_ref, h_ref = selective_scan(**inputs, impl="ref")
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)


def test_bf16_inputs_give_bf16_output():
    inputs = scan_inputs(1, 4, 4, 9, True, True, True, dtype=torch.bfloat16)
    y, h = selective_scan(**inputs, impl="chunked")
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32


def test_auto_picks_a_cpu_kernel():
    assert auto_kernel_name("cpu") in CPU_KERNELS


def test_unknown_kernel_suggests():
    with pytest.raises(RegistryError, match=r"unknown scan kernel 'chunkd'\. Did you mean 'chunked'\? Available: .*ref"):
        selective_scan(*[torch.zeros(1, 1, 1)] * 2, torch.zeros(1, 1), *[torch.zeros(1, 1, 1)] * 2, impl="chunkd")


def test_gpu_only_kernel_on_cpu_is_a_clear_error():
    gpu_only = [n for n in REG.names("scan_kernel") if "cpu" not in REG.get("scan_kernel", n).priority]
    if not gpu_only:
        pytest.skip("no GPU-only kernel registered")
    with pytest.raises(KernelUnavailableError, match="does not run on cpu tensors"):
        selective_scan(*[torch.zeros(1, 1, 1)] * 2, torch.zeros(1, 1), *[torch.zeros(1, 1, 1)] * 2, impl=gpu_only[0])
