"""The fused CPU scan kernel (`cpu_fused`) against the reference, forward and backward.

Tolerances are relative to the largest reference value (at least 1): float32 outputs and
gradients within 5e-6 of it (measured over this file's cases: at most 5e-7 for outputs,
7e-7 for gradients); bfloat16 within 1e-2 (one bfloat16 rounding is up to 4e-3). Both the
reference and the kernel compute in float32 (float64 inputs go through float32), so the
gradients are compared with autograd through the reference in float32, not in float64.
"""

import itertools
import threading

import pytest
import torch

from hybrid_mllm.core.scan import auto_kernel_name, reset_auto_choice, selective_scan
from hybrid_mllm.plugins.mixers import scan_cpu
from hybrid_mllm.plugins.mixers.scan_cpu import BuildError, build_library, find_compiler
from hybrid_mllm.plugins.mixers.scan_cpu import selective_scan_cpu_fused as fused
from hybrid_mllm.plugins.mixers.scan_ref import selective_scan_ref as ref

CPU = torch.device("cpu")
needs_kernel = pytest.mark.skipif(scan_cpu.available(CPU) is not None, reason="fused CPU kernel not built")
# Around the kernel's internal boundaries: vectors of 16 steps, blocks of 64 steps.
LENGTHS = (1, 7, 16, 17, 63, 64, 65, 257)
OPTIONS = ("state", "z", "D", "delta_bias", "softplus")
FP32_TOL, BF16_TOL = 5e-6, 1e-2


def make_inputs(batch=2, d=3, n=16, length=65, *, seed=0, dtype=torch.float32, options=OPTIONS) -> dict:
    """Fresh random inputs of the scan signature; `options` names the optional ones to give.
    Without softplus, delta and delta_bias are >= 0, as softplus would make them (with A < 0
    a negative delta grows the state exponentially, past float32's range)."""
    g = torch.Generator().manual_seed(seed)
    softplus = "softplus" in options

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def rate(*shape):
        return r(*shape, scale=0.5) if softplus else r(*shape, scale=0.5).abs()

    return {
        "u": r(batch, d, length).to(dtype), "delta": rate(batch, d, length).to(dtype),
        "A": -torch.rand(d, n, generator=g).add(0.1).mul(4),
        "B": r(batch, n, length).to(dtype), "C": r(batch, n, length).to(dtype),
        "D": r(d) if "D" in options else None,
        "z": r(batch, d, length).to(dtype) if "z" in options else None,
        "delta_bias": rate(d) if "delta_bias" in options else None,
        "softplus": softplus,
        "state": r(batch, d, n) if "state" in options else None,
    }


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
    scale = max(1.0, expected.float().abs().max().item() if expected.numel() else 0.0)
    assert diff <= tol * scale, f"{name}: max |diff| = {diff:.3e} > {tol:g} * {scale:.2f}"


def check_forward(inputs: dict, tol: float = FP32_TOL) -> None:
    y, h = fused(**inputs)
    y_ref, h_ref = ref(**inputs)
    assert y.dtype == inputs["u"].dtype and h.dtype == torch.float32
    assert_close("y", y, y_ref, tol)
    assert_close("last_state", h, h_ref, FP32_TOL)


def gradients(fn, inputs: dict, *, seed: int = 1) -> dict:
    """d/d(every tensor input) of a random weighting of y and of the last state."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if torch.is_tensor(v)}
    y, h = fn(**{**inputs, **leaves})
    g = torch.Generator().manual_seed(seed)
    loss = (y.float() * torch.randn(y.shape, generator=g)).sum() + (h * torch.randn(h.shape, generator=g)).sum()
    loss.backward()
    return {k: v.grad for k, v in leaves.items()}


def check_gradients(inputs: dict, tol: float = FP32_TOL) -> None:
    actual, expected = gradients(fused, inputs), gradients(ref, inputs)
    for name, grad in expected.items():
        assert actual[name] is not None, f"no gradient for {name}"
        assert actual[name].dtype == inputs[name].dtype, f"grad {name} dtype {actual[name].dtype}"
        assert_close(f"grad {name}", actual[name], grad, tol)


# ---- forward ------------------------------------------------------------------------------

@needs_kernel
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("flags", list(itertools.product((False, True), repeat=len(OPTIONS))),
                         ids=lambda f: "-".join(o for o, on in zip(OPTIONS, f) if on) or "bare")
def test_forward_matches_ref(length, flags):
    options = [o for o, on in zip(OPTIONS, flags) if on]
    check_forward(make_inputs(length=length, options=options, seed=length))


@needs_kernel
@pytest.mark.parametrize("n", [1, 5, 16, 17, 40, 64])
def test_any_state_size(n):
    """d_state is padded to whole vectors of 16 inside the kernel; results are unpadded."""
    check_forward(make_inputs(n=n, length=70, seed=n))
    check_gradients(make_inputs(n=n, length=70, seed=n))


@needs_kernel
def test_bf16_inputs():
    inputs = make_inputs(length=130, dtype=torch.bfloat16)
    check_forward(inputs, BF16_TOL)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_dtypes_go_through_float32(dtype):
    inputs = make_inputs(length=33, dtype=dtype)
    check_forward(inputs, BF16_TOL if dtype == torch.float16 else FP32_TOL)


@needs_kernel
def test_empty_sequence_returns_the_initial_state():
    inputs = make_inputs(length=0)
    y, h = fused(**inputs)
    assert y.shape == (2, 3, 0)
    assert torch.equal(h, inputs["state"])


@needs_kernel
def test_strong_decay_and_positive_A():
    """log-decays of -1000 per token underflow cleanly; a growing state (A > 0) is followed."""
    inputs = make_inputs(length=40, options=("state", "D"))
    inputs["delta"] = torch.full_like(inputs["delta"], 250.0)
    check_forward(inputs)
    inputs = make_inputs(length=40, options=("state",))
    inputs["A"] = inputs["A"].abs() * 0.1
    check_forward(inputs)


@needs_kernel
def test_nan_propagates_like_ref():
    inputs = make_inputs(length=20, options=("softplus",))
    inputs["delta"][0, 1, 5] = float("nan")
    y, _ = fused(**inputs)
    y_ref, _ = ref(**inputs)
    assert torch.equal(y.isnan(), y_ref.isnan())


def test_wrong_shapes_are_an_error_not_a_crash():
    inputs = make_inputs()
    inputs["B"] = inputs["B"][:, :, :-1]
    with pytest.raises(ValueError, match=r"B has shape \(2, 16, 64\), expected \(2, 16, 65\)"):
        fused(**inputs)


# ---- backward -----------------------------------------------------------------------------

@needs_kernel
@pytest.mark.parametrize("length", [1, 7, 64, 65, 257])
@pytest.mark.parametrize("options", [OPTIONS, ("softplus",), ("z", "D"), ("state", "delta_bias")], ids=str)
def test_gradients_match_ref(length, options):
    check_gradients(make_inputs(length=length, options=options, seed=length))


@needs_kernel
def test_bf16_gradients():
    inputs = make_inputs(length=70, dtype=torch.bfloat16)
    check_gradients(inputs, BF16_TOL)


@needs_kernel
def test_gradient_of_some_inputs_only():
    inputs = make_inputs(length=20)
    u = inputs["u"].clone().requires_grad_()
    y, _ = fused(**{**inputs, "u": u})
    (du,) = torch.autograd.grad(y.sum(), [u])
    u_ref = inputs["u"].clone().requires_grad_()
    y_ref, _ = ref(**{**inputs, "u": u_ref})
    (du_ref,) = torch.autograd.grad(y_ref.sum(), [u_ref])
    assert_close("grad u", du, du_ref, FP32_TOL)


@needs_kernel
def test_non_contiguous_inputs():
    """Transposed (batch, L, D) activations, strided B, C and A, an expanded gradient."""
    batch, d, n, length = 2, 5, 16, 70
    base = make_inputs(batch, d, n, length)
    g = torch.Generator().manual_seed(3)
    strided = {
        **base,
        "u": base["u"].transpose(1, 2).contiguous().transpose(1, 2),
        "delta": base["delta"].transpose(1, 2).contiguous().transpose(1, 2),
        "z": base["z"].transpose(1, 2).contiguous().transpose(1, 2),
        "B": torch.stack([base["B"], torch.randn(base["B"].shape, generator=g)], -1)[..., 0],
        "C": base["C"].transpose(1, 2).contiguous().transpose(1, 2),
        "A": base["A"].t().contiguous().t(),
    }
    assert not any(strided[k].is_contiguous() for k in ("u", "delta", "z", "B", "C", "A"))
    check_forward(strided)
    check_gradients(strided)
    u = strided["u"].detach().requires_grad_()
    y, _ = fused(**{**strided, "u": u})
    y.sum().backward()  # the incoming gradient is an expanded tensor with zero strides
    u_ref = base["u"].detach().requires_grad_()
    ref(**{**base, "u": u_ref})[0].sum().backward()
    assert_close("grad u", u.grad, u_ref.grad, FP32_TOL)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_time_strided_rows_give_the_same_bits_as_contiguous(threads):
    """Inputs strided in time (as Mamba's projections give them) are walked ROWS channels at a
    time; D = 37 and three batch elements put group edges mid-range and across batches, and
    each row's arithmetic must be unchanged: bit-identical to the contiguous inputs' result."""
    inputs = make_inputs(batch=3, d=37, n=16, length=150)
    inputs["state"] = torch.randn(3, 37, 16, generator=torch.Generator().manual_seed(5))
    strided = {k: v.transpose(1, 2).contiguous().transpose(1, 2) if k in ("u", "delta", "z") else v
               for k, v in inputs.items()}
    assert strided["u"].stride(2) != 1
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        y, h = fused(**strided)
        y_contiguous, h_contiguous = fused(**inputs)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(y, y_contiguous) and torch.equal(h, h_contiguous)
    assert_close("y", y, ref(**inputs)[0], FP32_TOL)


@needs_kernel
def test_backward_is_deterministic_across_thread_counts():
    inputs = make_inputs(batch=2, d=40, length=100)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gradients(fused, inputs)
        torch.set_num_threads(2)
        two, again = gradients(fused, inputs), gradients(fused, inputs)
    finally:
        torch.set_num_threads(threads)
    for name in one:
        assert torch.equal(one[name], two[name]) and torch.equal(two[name], again[name]), name


# ---- dispatch, build, fallback --------------------------------------------------------------

@needs_kernel
def test_auto_picks_the_fused_kernel_on_cpu():
    assert auto_kernel_name("cpu") == "cpu_fused"
    inputs = make_inputs(length=9)
    y, _ = selective_scan(**inputs)
    assert_close("y", y, ref(**inputs)[0], FP32_TOL)


@needs_kernel
def test_loading_keeps_denormals():
    """Linking with -ffast-math would pull in crtfastmath.o: denormals flushed process-wide."""
    assert (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() > 0


@pytest.fixture
def fresh_library():
    """Forget the loaded library and the auto choice before and after the test."""
    scan_cpu._load_library.cache_clear()
    reset_auto_choice()
    yield
    scan_cpu._load_library.cache_clear()
    reset_auto_choice()


def test_no_compiler_falls_back_to_chunked_with_one_warning(monkeypatch, fresh_library):
    monkeypatch.setattr(scan_cpu, "find_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match=r"could not be built \(no C compiler found.*install a C compiler.*'chunked'"):
        reason = scan_cpu.available(CPU)
    assert "no C compiler found" in reason and "\n" not in reason
    assert auto_kernel_name("cpu") == "chunked"


def test_compiler_error_is_reported(tmp_path):
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo fake 1.0; exit 0; }\n'
                       'echo "x.c: In function f:" >&2\necho "fake-cc: error: unsupported target" >&2\nexit 1\n')
    fake_cc.chmod(0o755)
    with pytest.raises(BuildError, match="fake-cc failed: fake-cc: error: unsupported target"):
        build_library(str(fake_cc), tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir()), "a failed build must leave no files behind"
    with pytest.raises(BuildError, match="cannot run the C compiler"):
        build_library(str(tmp_path / "missing-cc"), tmp_path / "cache")


@pytest.mark.skipif(find_compiler() is None, reason="no C compiler")
def test_cache_is_built_once_even_by_concurrent_builders(tmp_path):
    paths, errors = [], []

    def build():
        try:
            paths.append(build_library(find_compiler(), tmp_path))
        except BuildError as exc:
            errors.append(exc)

    builders = [threading.Thread(target=build) for _ in range(2)]
    for t in builders:
        t.start()
    for t in builders:
        t.join()
    assert not errors and len(set(paths)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name], "temporary files left behind"
    mtime = paths[0].stat().st_mtime_ns
    assert build_library(find_compiler(), tmp_path) == paths[0] and paths[0].stat().st_mtime_ns == mtime
