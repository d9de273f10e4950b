"""The Triton SSD scan (Mamba-2) matches the sequential definition, values and gradients.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``,
set here before Triton is first imported), so these tests run in CI on small shapes. On a GPU
machine (variable unset) the same tests run the compiled kernels on CUDA tensors; tests
marked ``gpu`` check them at realistic sizes and against mamba-ssm when it is installed.
"""

import json
import os
import subprocess
import sys
import textwrap

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

pytest.importorskip("triton", reason="triton is not installed: pip install triton")

from hybrid_mllm.core.errors import KernelUnavailableError
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.ssd import auto_kernel_name, ssd_scan
from hybrid_mllm.plugins.mixers import ssd_triton
from hybrid_mllm.plugins.mixers.ssd_ref import ssd_scan_ref
from hybrid_mllm.plugins.mixers.ssd_triton import ssd_scan_triton, triton_available
from hybrid_mllm.testing import (
    SSD_CASES,
    SSD_EDGE_CHECKS,
    check_ssd_gradients,
    check_ssd_matches_ref,
    check_ssd_nan,
)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in {"1", "true", "on", "yes"}
DEVICE = "cpu" if INTERPRET else "cuda"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("no CUDA and TRITON_INTERPRET is off: the Triton kernels cannot run", allow_module_level=True)
compiled_gpu = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(),
                                  reason="needs CUDA and the compiled (not interpreted) kernels")
NAMES = ("x", "dt", "A", "B", "C", "D", "state")


def make_inputs(batch, length, nheads, headdim, ngroups, d_state, *, with_D=True, with_state=True,
                dtype=torch.float32, device=DEVICE, seed=0):
    """SSD inputs as the mixer passes them: dt > 0 (after softplus), A < 0."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, dt_=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt_)

    dt = torch.nn.functional.softplus(torch.randn(batch, length, nheads, generator=g) - 1.0).to(device)
    return {
        "x": r(batch, length, nheads, headdim), "dt": dt,
        "A": -torch.rand(nheads, generator=g).add(0.2).mul(2).to(device),
        "B": r(batch, length, ngroups, d_state), "C": r(batch, length, ngroups, d_state),
        "D": r(nheads, dt_=torch.float32) if with_D else None,
        "state": r(batch, nheads, headdim, d_state, dt_=torch.float32) if with_state else None,
    }


def assert_close(actual, expected, tol, what):
    """max |actual - expected| <= tol * max(1, max |expected|), in float32 on the CPU."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    assert diff <= tol * scale, f"{what}: max |diff| = {diff:.3e} (scale {scale:.2f}, tol {tol})"


def check_forward(inputs, chunk_size=16, tol=1e-5, reference=ssd_scan_ref):
    y, h = ssd_scan_triton(**inputs, chunk_size=chunk_size)
    y_ref, h_ref = reference(**inputs)
    assert y.dtype == inputs["x"].dtype and h.dtype == torch.float32
    assert_close(y, y_ref, tol, "y")
    assert_close(h, h_ref, tol, "last state")


def check_backward(inputs, chunk_size=16, tol=1e-4, reference=ssd_scan_ref):
    """Grads of every tensor input (a loss on y and on the last state) vs autograd through the reference."""
    g = torch.Generator().manual_seed(1)
    grads = []
    for fn in (ssd_scan_triton, reference):
        leaves = {k: v.detach().clone().requires_grad_() if v is not None else None for k, v in inputs.items()}
        y, h = fn(**leaves, chunk_size=chunk_size)
        if not grads:
            w_y, w_h = torch.randn(y.shape, generator=g).to(y.device), torch.randn(h.shape, generator=g).to(h.device)
        ((y.float() * w_y).sum() + (h * w_h).sum()).backward()
        grads.append({k: leaves[k].grad for k in NAMES if inputs[k] is not None})
    for name, expected in grads[1].items():
        actual = grads[0][name]
        assert actual is not None, f"no gradient for {name}"
        assert actual.dtype == inputs[name].dtype, f"grad {name} has dtype {actual.dtype}"
        assert_close(actual, expected, tol, f"grad {name}")


# (batch, L, H, headdim, ngroups, d_state): L = 37 is 2 full chunks of 16 and a partial one;
# headdim 5 and d_state 3 are padded to the 16-wide tiles; ngroups 2 of 4 heads.
SHAPES = [(1, 1, 1, 4, 1, 4), (2, 37, 4, 5, 2, 3), (1, 16, 2, 8, 1, 8), (2, 20, 6, 4, 3, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(shape):
    check_forward(make_inputs(*shape))


def test_forward_without_D_or_state():
    check_forward(make_inputs(2, 19, 2, 4, 1, 4, with_D=False, with_state=False))


def test_chunk_size_changes_no_value():
    inputs = make_inputs(1, 70, 2, 4, 2, 4)
    y16, h16 = ssd_scan_triton(**inputs, chunk_size=16)
    y64, h64 = ssd_scan_triton(**inputs, chunk_size=256)
    assert ssd_triton.chunk_block(256) == 64 and ssd_triton.chunk_block(7) == 16
    assert ssd_triton.chunk_block(256, ssd_triton.MAX_CHUNK_GRAD) == 32
    assert_close(y16, y64, 1e-5, "y (chunks 16 vs 64)")
    assert_close(h16, h64, 1e-5, "state (chunks 16 vs 64)")


@pytest.mark.parametrize("shape", [(2, 37, 4, 5, 2, 3), (1, 3, 2, 4, 1, 4)], ids=str)
def test_gradients_match_reference(shape):
    check_backward(make_inputs(*shape))


def test_gradients_without_D_or_state():
    check_backward(make_inputs(1, 18, 2, 4, 2, 4, with_D=False, with_state=False))


def test_gradient_only_for_some_inputs():
    inputs = make_inputs(1, 9, 2, 4, 1, 4)
    x = inputs["x"].clone().requires_grad_()
    ssd_scan_triton(**{**inputs, "x": x}, chunk_size=16)[0].sum().backward()
    x_ref = inputs["x"].clone().requires_grad_()
    ssd_scan_ref(**{**inputs, "x": x_ref})[0].sum().backward()
    assert_close(x.grad, x_ref.grad, 1e-5, "grad x")


def test_half_precision_inputs():
    """bf16 x, B, C; float32 dt, A, D, state and arithmetic: y differs by the final rounding."""
    inputs = make_inputs(1, 21, 2, 8, 1, 8, dtype=torch.bfloat16)
    check_forward(inputs, tol=1e-2)
    check_backward(inputs, tol=3e-2)


def test_non_contiguous_inputs():
    """x, B and C as the mixer passes them: views into one (batch, L, channels) tensor."""
    g = torch.Generator().manual_seed(0)
    batch, length, nheads, headdim, ngroups, d_state = 2, 13, 2, 4, 1, 4
    d_inner = nheads * headdim
    xBC = torch.randn(batch, length, d_inner + 2 * ngroups * d_state, generator=g).to(DEVICE)
    x, B, C = torch.split(xBC, [d_inner, ngroups * d_state, ngroups * d_state], dim=-1)
    inputs = make_inputs(batch, length, nheads, headdim, ngroups, d_state)
    inputs.update(x=x.view(batch, length, nheads, headdim), B=B.view(batch, length, ngroups, d_state),
                  C=C.view(batch, length, ngroups, d_state))
    assert not inputs["x"].is_contiguous()
    check_forward(inputs)
    check_backward(inputs)


def test_strong_decay_and_zero_dt_stay_exact():
    """dt = 30 (exp(dt A) underflows to 0) and dt = 0 (padding: state passes unchanged)."""
    inputs = make_inputs(1, 20, 2, 4, 1, 4)
    inputs["dt"][:, 3:7] = 30.0
    inputs["dt"][:, 12:] = 0.0
    y, h = ssd_scan_triton(**inputs, chunk_size=16)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    check_forward(inputs)
    check_backward(inputs)


def test_nan_in_dt_poisons_what_ref_poisons():
    """NaN in dt at step 20 of 37 (the second chunk of 16): NaN from there on and in the state, as in ref."""
    inputs = make_inputs(1, 37, 2, 4, 1, 4)
    inputs["dt"][0, 20, 1] = float("nan")
    y, h = ssd_scan_triton(**inputs, chunk_size=16)
    y_ref, h_ref = ssd_scan_ref(**inputs)
    assert torch.equal(torch.isnan(y.cpu()), torch.isnan(y_ref)) and torch.equal(torch.isnan(h.cpu()), torch.isnan(h_ref))
    assert torch.isnan(y[0, 20:, 1]).all() and not torch.isnan(y[0, :20]).any()


def test_empty_sequence_returns_initial_state():
    inputs = make_inputs(2, 0, 2, 4, 1, 4)
    state = inputs["state"].clone().requires_grad_()
    y, h = ssd_scan_triton(**{**inputs, "state": state})
    assert y.shape == (2, 0, 2, 4) and torch.equal(h.detach(), inputs["state"])
    h.sum().backward()
    assert torch.equal(state.grad, torch.ones_like(state))


def test_bad_shapes_name_the_tensor():
    inputs = make_inputs(1, 4, 4, 4, 2, 4)
    with pytest.raises(ValueError, match=r"C has shape \(1, 4, 2, 5\), expected \(1, 4, 2, 4\)"):
        ssd_scan_triton(**{**inputs, "C": inputs["C"].new_zeros(1, 4, 2, 5)})
    with pytest.raises(ValueError, match="ngroups = 3 must divide the 4 heads"):
        ssd_scan_triton(**{**inputs, "B": inputs["B"].new_zeros(1, 4, 3, 4), "C": inputs["C"].new_zeros(1, 4, 3, 4)})


@pytest.mark.parametrize("case", SSD_CASES, ids=str)
def test_contract_forward(case):
    check_ssd_matches_ref(ssd_scan_triton, case, device=DEVICE)


@pytest.mark.parametrize("check", (*SSD_EDGE_CHECKS, check_ssd_nan), ids=lambda c: c.__name__)
def test_contract_edge_cases(check):
    check(ssd_scan_triton, device=DEVICE)


@pytest.mark.parametrize("case", SSD_CASES[1:4], ids=str)
def test_contract_gradients(case):
    check_ssd_gradients(ssd_scan_triton, case, device=DEVICE)


def test_registered_with_priority_and_install_hint():
    kernel = get_registry().get("ssd_kernel", "triton")
    assert kernel.fn is ssd_scan_triton and kernel.priority == {"cuda": 50} and not kernel.export_safe
    assert "CUDA tensors only" in triton_available("cpu") and "pip install triton" in triton_available("cpu")
    if torch.cuda.is_available():
        assert triton_available("cuda") is None
    else:
        assert auto_kernel_name("cpu") != "triton"
        with pytest.raises(KernelUnavailableError, match="does not run on cpu"):
            ssd_scan(**make_inputs(1, 3, 2, 4, 1, 4), impl="triton")


SHARED_LIMIT = 227 * 1024  # bytes of shared memory per block on an H100 / H200


def test_kernels_compile_for_sm90_within_shared_memory():
    """Compiled to PTX for sm_90 without a GPU (Triton needs no device for that), at Mamba-2's
    usual headdim 64 and d_state 128 with the chunks the launcher uses: each fits in the shared
    memory of one H100 block (a larger chunk in the backward does not)."""
    script = textwrap.dedent("""
        import json
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from hybrid_mllm.plugins.mixers import ssd_triton as s
        kernels = s._kernels()
        out = {}
        for name, fn, chunk, extra in (("fwd", kernels.fwd, s.MAX_CHUNK, {"HAS_H0": True, "STORE_CKPT": True}),
                                       ("bwd", kernels.bwd, s.MAX_CHUNK_GRAD, {})):
            for act, dot in (("*bf16", "tf32"),):  # float32 (ieee dots) fits too, but compiles for minutes
                const = {"HAS_D": True, "DOT": dot, "BLOCK_Q": chunk, "BLOCK_P": 64, "BLOCK_N": 128, **extra}
                sig = {a: (act if a in ("x_ptr", "B_ptr", "C_ptr", "y_ptr", "dy_ptr", "dx_ptr") else "*fp32")
                       if a.endswith("_ptr") else "constexpr" if a in const else "i32" for a in fn.arg_names}
                compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                          target=GPUTarget("cuda", 90, 32), options={"num_warps": s.NUM_WARPS})
                out[f"{name} {act}"] = compiled.metadata.shared
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    shared = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(0 < v <= SHARED_LIMIT for v in shared.values()), shared


# --- compiled kernels on a GPU (scripts/gpu_check.sh) ---------------------------------------


@pytest.mark.gpu
@compiled_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_forward_and_backward_long(dtype):
    inputs = make_inputs(2, 1000, 8, 64, 2, 64, dtype=dtype, device="cuda")
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    check_forward(inputs, chunk_size=256, tol=tol)
    check_backward(make_inputs(1, 300, 4, 64, 2, 64, dtype=dtype, device="cuda"), chunk_size=256, tol=5 * tol)


@pytest.mark.gpu
@compiled_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_matches_mamba_ssm(dtype):
    """Against mamba-ssm's ``mamba_chunk_scan_combined`` (the ``mamba_ssm`` SSD kernel), with an initial state."""
    pytest.importorskip("mamba_ssm.ops.triton.ssd_combined", reason="mamba_ssm is not installed")
    from hybrid_mllm.plugins.mixers.ssd_mamba_ssm import ssd_scan_mamba_ssm

    inputs = make_inputs(2, 2048, 16, 64, 2, 128, dtype=dtype, device="cuda")
    tol = 2e-3 if dtype == torch.float32 else 3e-2
    check_forward(inputs, chunk_size=256, tol=tol, reference=ssd_scan_mamba_ssm)
