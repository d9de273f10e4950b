"""The fused CPU SSD kernel against the reference: shapes the C code branches on, strides, dtypes."""

import pytest
import torch

from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.ssd import auto_kernel_name, reset_auto_choice, ssd_scan
from hybrid_mllm.plugins.mixers import scan_cpu, ssd_cpu
from hybrid_mllm.plugins.mixers.scan_cpu import BuildError
from hybrid_mllm.testing import check_ssd_gradients, check_ssd_matches_ref
from hybrid_mllm.testing.ssd_contract import ssd_inputs

needs_kernel = pytest.mark.skipif(ssd_cpu.available(torch.device("cpu")) is not None,
                                  reason="the fused CPU SSD kernel does not build here")
FN = ssd_cpu.ssd_scan_cpu

# (batch, L, H, P, G, N, with_state, with_D, chunk_size): headdim over one group of 64 channels
# (80 = 64 + 16, 144 = 2 x 64 + 16), not a multiple of 16 (20), heads split into parts (H = 24, G = 2)
CASES = [
    (1, 1, 2, 80, 1, 8, True, True, 16),
    (2, 37, 3, 20, 1, 5, True, False, 16),
    (1, 70, 24, 4, 2, 3, True, True, 16),
    (1, 33, 2, 144, 2, 4, False, True, 16),
]


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_ref(case):
    check_ssd_matches_ref(FN, case)


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradients_match_ref(case):
    check_ssd_gradients(FN, case)


@needs_kernel
def test_auto_picks_it_on_cpu():
    assert auto_kernel_name("cpu") == "cpu"
    assert get_registry().get("ssd_kernel", "cpu").fn is FN


@needs_kernel
def test_non_contiguous_inputs():
    """Transposed and sliced views give the values of their contiguous copies."""
    inputs = ssd_inputs(2, 19, 4, 8, 2, 6, True, True)
    views = {k: v.transpose(0, -1).contiguous().transpose(0, -1) if torch.is_tensor(v) and v.dim() > 1 else v
             for k, v in inputs.items()}
    views["x"] = torch.cat([inputs["x"], inputs["x"]], dim=-1)[..., ::2]  # stride 2 along headdim
    views["x"].copy_(inputs["x"])
    assert not views["x"].is_contiguous() and not views["B"].is_contiguous()
    y, h = FN(**views)
    y_ref, h_ref = ssd_scan(**inputs, impl="ref")
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_bf16_values_and_gradients():
    inputs = ssd_inputs(1, 21, 4, 16, 2, 8, True, True, dtype=torch.bfloat16)
    leaves = {k: v.detach().requires_grad_() if torch.is_tensor(v) else v for k, v in inputs.items()}
    y, h = FN(**leaves)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    (y.float().sum() + h.sum()).backward()
    assert leaves["x"].grad.dtype == torch.bfloat16 and leaves["B"].grad.dtype == torch.bfloat16
    ref = {k: v.detach().float().requires_grad_() if torch.is_tensor(v) else v for k, v in inputs.items()}
    y_ref, h_ref = ssd_scan(**ref, impl="ref")
    (y_ref.sum() + h_ref.sum()).backward()
    torch.testing.assert_close(y.float(), y_ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(leaves["x"].grad.float(), ref["x"].grad, atol=3e-2, rtol=3e-2)


@needs_kernel
def test_gradients_do_not_depend_on_the_thread_count():
    inputs = ssd_inputs(2, 40, 8, 8, 2, 4, True, True)
    before = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = {k: v.detach().requires_grad_() if torch.is_tensor(v) else v for k, v in inputs.items()}
            y, h = FN(**leaves)
            (y.square().sum() + h.sum()).backward()
            grads.append({k: v.grad for k, v in leaves.items() if torch.is_tensor(v)})
    finally:
        torch.set_num_threads(before)
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), f"grad '{name}' differs between 1 and 2 threads"


@needs_kernel
def test_wrong_shapes_are_an_error_not_a_crash():
    inputs = ssd_inputs(1, 5, 4, 4, 2, 3, True, True)
    inputs["B"] = inputs["B"][:, :3]
    with pytest.raises(ValueError, match=r"B has shape \(1, 3, 2, 3\), expected \(1, 5, 2, 3\)"):
        FN(**inputs)


@pytest.fixture
def fresh_library():
    """Forget the loaded library and the auto choice before and after the test."""
    ssd_cpu._load_library.cache_clear()
    reset_auto_choice()
    yield
    ssd_cpu._load_library.cache_clear()
    reset_auto_choice()


def test_no_compiler_falls_back_to_chunked_with_one_warning(monkeypatch, fresh_library):
    monkeypatch.setattr(scan_cpu, "find_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match=r"could not be built \(no C compiler found.*install a C compiler.*'chunked'"):
        reason = ssd_cpu.available(torch.device("cpu"))
    assert "no C compiler found" in reason and "\n" not in reason
    assert auto_kernel_name("cpu") == "chunked"


def test_compiler_error_is_reported(tmp_path, monkeypatch):
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo fake 1.0; exit 0; }\n'
                       'echo "fake-cc: error: unsupported target" >&2\nexit 1\n')
    fake_cc.chmod(0o755)
    monkeypatch.setattr(scan_cpu, "find_compiler", lambda: str(fake_cc))
    monkeypatch.setenv(scan_cpu.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(BuildError, match="fake-cc failed: fake-cc: error: unsupported target"):
        ssd_cpu.build_library()
    assert not list((tmp_path / "cache").iterdir()), "a failed build must leave no files behind"
