"""The Triton selective scan and causal conv1d match the PyTorch definitions.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``,
set here and in conftest.py before Triton is first imported), so these tests run in CI.
On a GPU machine (variable unset) the same tests run the compiled kernels on CUDA
tensors. Tests marked ``gpu`` check the compiled kernels at realistic sizes (L up to
4096, float32 and bfloat16, offsets past 2**31) and against mamba-ssm when installed.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed: pip install triton")

from hybrid_mllm.core.errors import KernelUnavailableError  # noqa: E402
from hybrid_mllm.core.registry import get_registry  # noqa: E402
from hybrid_mllm.core.scan import auto_kernel_name, selective_scan  # noqa: E402
from hybrid_mllm.plugins.mixers import scan_triton  # noqa: E402
from hybrid_mllm.plugins.mixers.conv import causal_conv1d  # noqa: E402
from hybrid_mllm.plugins.mixers.conv_triton import causal_conv1d_triton  # noqa: E402
from hybrid_mllm.plugins.mixers.scan_chunked import selective_scan_chunked  # noqa: E402
from hybrid_mllm.plugins.mixers.scan_mamba_ssm import mamba_ssm_available, selective_scan_mamba_ssm  # noqa: E402
from hybrid_mllm.plugins.mixers.scan_ref import selective_scan_ref  # noqa: E402
from hybrid_mllm.plugins.mixers.scan_triton import selective_scan_triton, triton_available  # noqa: E402
from hybrid_mllm.testing import SCAN_CASES, SCAN_EDGE_CHECKS, check_scan_gradients, check_scan_matches_ref  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in {"1", "true", "on", "yes"}
DEVICE = "cpu" if INTERPRET else "cuda"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("no CUDA and TRITON_INTERPRET is off: the Triton kernels cannot run", allow_module_level=True)
compiled_gpu = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(),
                                  reason="needs CUDA and the compiled (not interpreted) kernels")

# Option sets: (state, z, D, delta_bias, softplus)
OPTIONS = {
    "plain": (False, False, False, False, False),
    "all": (True, True, True, True, True),
    "state": (True, False, False, False, False),
    "z_D": (False, True, True, False, False),
    "bias_softplus": (False, False, False, True, True),
}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state")


def make_inputs(batch, d, n, length, options="all", *, dtype=torch.float32, device=DEVICE, seed=0):
    """Scan inputs as a dict (Mamba-like ranges: A < 0, moderate delta)."""
    with_state, with_z, with_d, with_bias, softplus = OPTIONS[options]
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt)

    delta = r(batch, d, length, scale=0.5)
    return {
        "u": r(batch, d, length), "delta": delta if softplus else delta.abs(),  # delta' > 0
        "A": -torch.rand(d, n, generator=g).add(0.1).mul(4).to(device),
        "B": r(batch, n, length), "C": r(batch, n, length),
        "D": r(d, dt=torch.float32) if with_d else None,
        "z": r(batch, d, length) if with_z else None,
        "delta_bias": r(d, scale=0.5, dt=torch.float32) if with_bias else None,
        "softplus": softplus,
        "state": r(batch, d, n, dt=torch.float32) if with_state else None,
    }


def assert_close(actual, expected, tol, what):
    """max |actual - expected| <= tol * max(1, max |expected|), in float32 on the CPU."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    assert diff <= tol * scale, f"{what}: max |diff| = {diff:.3e} (scale {scale:.2f}, tol {tol})"


def check_forward(inputs, tol=1e-5, reference=selective_scan_ref):
    y, h = selective_scan_triton(**inputs)
    y_ref, h_ref = reference(**inputs)
    assert y.dtype == inputs["u"].dtype and h.dtype == torch.float32
    assert_close(y, y_ref, tol, "y")
    assert_close(h, h_ref, tol, "last_state")


def check_backward(inputs, tol=1e-5):
    """Grads of every tensor input (loss on y and the last state) vs autograd through ref."""
    g = torch.Generator().manual_seed(1)
    grads = []
    for fn in (selective_scan_triton, selective_scan_ref):
        leaves = {k: v.detach().clone().requires_grad_() if torch.is_tensor(v) else v for k, v in inputs.items()}
        y, h = fn(**leaves)
        if not grads:
            w_y = torch.randn(y.shape, generator=g).to(y.device)
            w_h = torch.randn(h.shape, generator=g).to(h.device)
        ((y.float() * w_y).sum() + (h * w_h).sum()).backward()
        grads.append({k: leaves[k].grad for k in NAMES if inputs[k] is not None})
    for name, expected in grads[1].items():
        actual = grads[0][name]
        assert actual is not None, f"no gradient for {name}"
        assert actual.dtype == inputs[name].dtype, f"grad {name} has dtype {actual.dtype}"
        assert_close(actual, expected, tol, f"grad {name}")


# --- forward ------------------------------------------------------------------------------
# Lengths 31, 32, 33, 65 straddle the checkpoint interval (32); D = 70 spans two forward
# channel blocks (64) with a masked tail; N = 3, 5 are not powers of 2 (padded, masked).
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 70, 16, 33), (2, 5, 4, 31), (1, 4, 16, 32), (1, 4, 3, 65)]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_ref(shape, options):
    check_forward(make_inputs(*shape, options))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs(dtype):
    """Half inputs, float32 arithmetic: y differs from ref only by the final rounding."""
    inputs = make_inputs(2, 6, 16, 9, "all", dtype=dtype)
    check_forward(inputs, tol=1e-2)
    check_backward(inputs, tol=2e-2)


def test_non_contiguous_inputs():
    """Views as the Mamba block passes them: (batch, L, D) and (batch, L, N) transposed."""
    base = make_inputs(2, 6, 5, 11, "all")
    inputs = dict(base)
    for name in ("u", "delta", "z", "B", "C"):
        inputs[name] = base[name].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["A"] = base["A"].t().contiguous().t()
    assert not inputs["u"].is_contiguous()
    check_forward(inputs)
    check_backward(inputs)
    y, _ = selective_scan_triton(**inputs)
    assert y.stride() == inputs["u"].stride(), "y keeps u's memory layout"


def test_strong_decay_stays_finite():
    inputs = make_inputs(1, 4, 4, 20, "plain")
    inputs["delta"] = torch.full_like(inputs["delta"], 100.0)
    y, h = selective_scan_triton(**inputs)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    check_forward(inputs)


@pytest.mark.parametrize("case", SCAN_CASES, ids=str)
def test_contract_forward(case):
    check_scan_matches_ref(selective_scan_triton, case, device=DEVICE)


@pytest.mark.parametrize("check", SCAN_EDGE_CHECKS, ids=lambda c: c.__name__)
def test_contract_edge_cases(check):
    check(selective_scan_triton, device=DEVICE)


@pytest.mark.parametrize("case", SCAN_CASES[:4], ids=str)
def test_contract_gradients(case):
    check_scan_gradients(selective_scan_triton, case, device=DEVICE)


# --- backward -----------------------------------------------------------------------------


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 1), (1, 40, 16, 3), (2, 5, 4, 4), (1, 4, 3, 9)], ids=str)
def test_gradients_match_ref_small_checkpoints(shape, options, monkeypatch):
    """Checkpoints every 4 tokens: L = 1, 3, 4, 9 cover one partial, one full and 3 chunks."""
    monkeypatch.setattr(scan_triton, "CHECKPOINT_EVERY", 4)
    check_backward(make_inputs(*shape, options))


@pytest.mark.parametrize("length", [31, 33])
def test_gradients_match_ref_default_checkpoints(length):
    """Default checkpoints (32): one full and one partial chunk; D = 40 spans two backward
    channel blocks (32)."""
    check_backward(make_inputs(1, 40, 16, length, "all"))


def test_gradient_only_for_some_inputs():
    """Only u requires a gradient, and no initial state is given."""
    inputs = make_inputs(1, 3, 4, 6, "z_D")
    u = inputs["u"].clone().requires_grad_()
    y, _ = selective_scan_triton(**{**inputs, "u": u})
    y.float().sum().backward()
    u_ref = inputs["u"].clone().requires_grad_()
    selective_scan_ref(**{**inputs, "u": u_ref})[0].float().sum().backward()
    assert_close(u.grad, u_ref.grad, 1e-5, "grad u")


def test_no_grad_matches_grad_path():
    inputs = make_inputs(2, 4, 8, 10, "all")
    with torch.no_grad():
        y0, h0 = selective_scan_triton(**inputs)
    y1, h1 = selective_scan_triton(**{**inputs, "u": inputs["u"].clone().requires_grad_()})
    assert torch.equal(y0, y1.detach()) and torch.equal(h0, h1.detach())


def test_empty_sequence_returns_initial_state():
    inputs = make_inputs(2, 3, 4, 0, "all")
    state = inputs["state"].clone().requires_grad_()
    y, h = selective_scan_triton(**{**inputs, "state": state})
    assert y.shape == (2, 3, 0)
    assert torch.equal(h.detach(), inputs["state"])
    h.sum().backward()
    assert torch.equal(state.grad, torch.ones_like(state))


# --- registration and the mamba_ssm wrapper -----------------------------------------------


def test_registered_with_priorities_and_install_hints():
    registry = get_registry()
    triton_kernel = registry.get("scan_kernel", "triton")
    mamba_kernel = registry.get("scan_kernel", "mamba_ssm")
    assert triton_kernel.priority == {"cuda": 50} and mamba_kernel.priority == {"cuda": 100}
    assert "pip install triton" in triton_available(torch.device("cpu"))
    assert "pip install mamba-ssm --no-build-isolation" in mamba_ssm_available(torch.device("cpu"))
    if torch.cuda.is_available():
        assert triton_available(torch.device("cuda")) is None
    else:
        assert auto_kernel_name("cpu") not in {"triton", "mamba_ssm"}
        with pytest.raises(KernelUnavailableError, match="does not run on cpu"):
            selective_scan(**make_inputs(1, 2, 2, 3), impl="triton")


def test_mamba_ssm_with_state_runs_the_triton_kernel():
    """mamba-ssm takes no initial state: with one, the wrapper delegates to Triton."""
    inputs = make_inputs(2, 4, 4, 7, "all")
    y, h = selective_scan_mamba_ssm(**inputs)
    y_t, h_t = selective_scan_triton(**inputs)
    assert torch.equal(y, y_t) and torch.equal(h, h_t)


# --- causal conv1d -----------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("kernel", [1, 2, 4])
@pytest.mark.parametrize("channels, length", [(3, 1), (3, 2), (20, 70)], ids=str)
def test_conv_matches_pytorch(channels, length, kernel, with_bias):
    """D = 20 and L = 70 span two channel and two time tiles (16 x 64); L < K - 1 too."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, length, generator=g).to(DEVICE)
    weight = torch.randn(channels, kernel, generator=g).to(DEVICE)
    bias = torch.randn(channels, generator=g).to(DEVICE) if with_bias else None
    state = torch.randn(2, channels, kernel - 1, generator=g).to(DEVICE)
    y, new_state = causal_conv1d_triton(x, weight, bias, state)
    y_ref, state_ref = causal_conv1d(x, weight, bias, state)
    assert_close(y, y_ref, 1e-5, "conv y")
    assert torch.equal(new_state, state_ref)


def test_conv_bf16_and_strided_input():
    """bf16 x as a transposed (B, L, D) view, float32 state (cast to x's dtype, as the op does)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 8, generator=g).to(DEVICE, torch.bfloat16)  # (B, L, D)
    x = x.transpose(1, 2)
    weight = torch.randn(8, 4, generator=g).to(DEVICE, torch.bfloat16)
    bias = torch.randn(8, generator=g).to(DEVICE, torch.bfloat16)
    state = torch.randn(2, 8, 3, generator=g).to(DEVICE)
    y, new_state = causal_conv1d_triton(x, weight, bias, state)
    y_ref, state_ref = causal_conv1d(x.float(), weight.float(), bias.float(), state.to(torch.bfloat16).float())
    assert y.dtype == torch.bfloat16
    assert_close(y, y_ref, 1e-2, "conv y bf16")
    assert torch.equal(new_state, state_ref.to(torch.bfloat16))


def test_conv_gradient_falls_back_to_pytorch():
    x = torch.randn(1, 3, 5, device=DEVICE, requires_grad=True)
    weight, state = torch.randn(3, 4, device=DEVICE), torch.zeros(1, 3, 3, device=DEVICE)
    y, _ = causal_conv1d_triton(x, weight, None, state)
    y.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    causal_conv1d(x_ref, weight, None, state)[0].sum().backward()
    assert_close(x.grad, x_ref.grad, 1e-6, "conv grad x")


# --- compiled kernels on a GPU (scripts/gpu_check.sh) ---------------------------------------


@pytest.mark.gpu
@compiled_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("length", [1024, 4096])
def test_gpu_forward_long(length, dtype):
    inputs = make_inputs(2, 96, 16, length, "all", dtype=dtype, device="cuda")
    check_forward(inputs, tol=1e-4 if dtype == torch.float32 else 1e-2)


@pytest.mark.gpu
@compiled_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_backward_long(dtype):
    inputs = make_inputs(2, 80, 16, 2048, "all", dtype=dtype, device="cuda")
    check_backward(inputs, tol=1e-3 if dtype == torch.float32 else 2e-2)


@pytest.mark.gpu
@compiled_gpu
def test_gpu_offsets_past_int32():
    """batch * D * L = 3 * 2**30 elements: the last row starts past 2**31 (int64 offsets)."""
    batch, channels, length, d_state = 3, 16384, 65536, 16
    need = 3 * batch * channels * length * 2  # u, delta, y in bf16
    if torch.cuda.mem_get_info()[0] < need + (4 << 30):
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(batch, channels, length, device="cuda", dtype=torch.bfloat16, generator=g)
    delta = torch.rand(batch, channels, length, device="cuda", dtype=torch.bfloat16, generator=g).mul_(0.1)
    A = -torch.rand(channels, d_state, device="cuda", generator=g).add(0.1)
    B = torch.randn(batch, d_state, length, device="cuda", generator=g)
    C = torch.randn(batch, d_state, length, device="cuda", generator=g)
    y, h = selective_scan_triton(u, delta, A, B, C)
    rows = slice(channels - 8, channels)  # the last channels of the last batch row
    y_ref, h_ref = selective_scan_chunked(u[-1:, rows], delta[-1:, rows], A[rows], B[-1:], C[-1:])
    assert_close(y[-1:, rows], y_ref, 1e-2, "y past 2**31")
    assert_close(h[-1:, rows], h_ref, 1e-3, "last state past 2**31")


@pytest.mark.gpu
@compiled_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_matches_mamba_ssm(dtype):
    pytest.importorskip("mamba_ssm.ops.selective_scan_interface", reason="mamba_ssm is not installed")
    inputs = make_inputs(2, 128, 16, 4096, "all", dtype=dtype, device="cuda")
    inputs["state"] = None
    tol = 1e-3 if dtype == torch.float32 else 2e-2
    check_forward(inputs, tol=tol, reference=selective_scan_mamba_ssm)
    grads = []
    for fn in (selective_scan_triton, selective_scan_mamba_ssm):
        leaves = {k: v.detach().clone().requires_grad_() if torch.is_tensor(v) else v for k, v in inputs.items()}
        y, _ = fn(**leaves)
        y.float().square().mean().backward()
        grads.append({k: leaves[k].grad for k in NAMES if inputs[k] is not None})
    for name, expected in grads[1].items():
        assert_close(grads[0][name], expected, 5 * tol, f"grad {name} vs mamba_ssm")


@pytest.mark.gpu
@compiled_gpu
def test_gpu_conv_long():
    x = torch.randn(2, 1024, 4096, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(1024, 4, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(1024, device="cuda", dtype=torch.bfloat16)
    state = torch.randn(2, 1024, 3, device="cuda", dtype=torch.bfloat16)
    y, new_state = causal_conv1d_triton(x, weight, bias, state)
    y_ref, state_ref = causal_conv1d(x.float(), weight.float(), bias.float(), state.float())
    assert_close(y, y_ref, 1e-2, "conv y")
    assert torch.equal(new_state, state_ref.to(torch.bfloat16))


@pytest.mark.gpu
@compiled_gpu
def test_gpu_auto_picks_a_fast_kernel():
    assert auto_kernel_name("cuda") in {"mamba_ssm", "triton"}
    inputs = make_inputs(1, 8, 4, 64, "all", device="cuda")
    y, h = selective_scan(**inputs, impl="auto")
    assert_close(y, selective_scan_ref(**inputs)[0], 1e-4, "auto y")
