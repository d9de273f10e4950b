"""The export's op-level pieces: softplus in fast standard ops, and the custom flavour's CPU ops.

- `softplus_onnx` is checked in ONNX Runtime against torch's softplus over values from
  -100 to 100 (both sides of the threshold, where exp would overflow), for several beta /
  threshold pairs and in float16; the graph must hold no ``Softplus`` node.
- `cpu_ops.selective_scan` (the fused C kernel on numpy arrays) and `cpu_ops.causal_conv1d`
  are checked against their numpy references, and the scan falls back to the reference
  when the kernel is unavailable.
"""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hybrid_mllm.export.onnx.graph import export_graph  # noqa: E402
from hybrid_mllm.export.onnx.softplus import TRANSLATIONS  # noqa: E402
from hybrid_mllm.plugins.mixers import ops_cpu as cpu_ops  # noqa: E402
from hybrid_mllm.plugins.mixers import scan_cpu  # noqa: E402


class _Softplus(nn.Module):
    def __init__(self, beta: float, threshold: float):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x):
        return F.softplus(x, beta=self.beta, threshold=self.threshold)


@pytest.mark.parametrize("beta, threshold, dtype", [(1.0, 20.0, torch.float32), (2.0, 5.0, torch.float32),
                                                    (0.5, 1.0, torch.float32), (1.0, 20.0, torch.float16)])
def test_softplus_translation_matches_torch(tmp_path, beta, threshold, dtype):
    x = torch.cat([torch.linspace(-100, 100, 2001), torch.randn(999) * 5]).to(dtype)[None]  # (1, 3000)
    length = torch.export.Dim("length")
    path = tmp_path / "softplus.onnx"
    export_graph(_Softplus(beta, threshold), (x,), path, dynamic_shapes=({1: length},), input_names=["x"],
                 output_names=["y"], opset=18, translations=TRANSLATIONS)
    model = onnx.load(str(path))
    assert not any(n.op_type == "Softplus" for n in model.graph.node)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    want = F.softplus(x.float(), beta=beta, threshold=threshold).to(dtype)
    assert got.dtype == x.numpy().dtype
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-6 if dtype == torch.float32 else 1e-3,
                               rtol=1e-6 if dtype == torch.float32 else 1e-3)


def _scan_arrays(batch=2, d=6, n=5, length=37, seed=0):
    rng = np.random.default_rng(seed)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return dict(u=f32(batch, d, length), delta=f32(batch, d, length), A=-np.exp(f32(d, n)), B=f32(batch, n, length),
                C=f32(batch, n, length), D=f32(d), z=f32(batch, d, length), delta_bias=f32(d),
                state=f32(batch, d, n))


@pytest.mark.parametrize("softplus", [0, 1])
@pytest.mark.parametrize("length", [1, 37, 130])
def test_cpu_scan_matches_numpy_reference(softplus, length):
    if scan_cpu.available(torch.device("cpu")) is not None:
        pytest.skip("the fused CPU scan kernel cannot be built here (no C compiler)")
    arrays = _scan_arrays(length=length)
    if not softplus:
        arrays["delta"] = np.abs(arrays["delta"])
    y, h = cpu_ops.selective_scan(**arrays, softplus=softplus)
    y_ref, h_ref = cpu_ops.reference_selective_scan(**arrays, softplus=softplus)
    assert y.dtype == np.float32 and y.shape == y_ref.shape and h.shape == h_ref.shape
    # rtol 1e-3: the C kernel's own exp polynomial against numpy's exp, over up to 130 steps
    # with y up to ~600 in magnitude (measured up to 2e-4)
    np.testing.assert_allclose(y, y_ref, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(h, h_ref, atol=1e-4, rtol=1e-3)


def test_cpu_scan_falls_back_to_the_reference_without_the_kernel(monkeypatch):
    arrays = _scan_arrays(length=9)
    monkeypatch.setattr(scan_cpu, "available", lambda device: "no C compiler (test)")
    monkeypatch.setattr(scan_cpu, "selective_scan_cpu_fused", None)  # calling it would fail the test
    y, h = cpu_ops.selective_scan(**arrays, softplus=1)
    y_ref, h_ref = cpu_ops.reference_selective_scan(**arrays, softplus=1)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h, h_ref)


def test_cpu_scan_accepts_read_only_arrays():
    """torch.from_numpy only warns on read-only memory (writes through it would be undefined),
    so the check is that no warning is raised: the arrays are copied first."""
    arrays = _scan_arrays(length=5)
    for a in arrays.values():
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _ = cpu_ops.selective_scan(**arrays, softplus=1)
    y_ref, _ = cpu_ops.reference_selective_scan(**arrays, softplus=1)
    np.testing.assert_allclose(y, y_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("length", [1, 2, 40])
def test_cpu_conv_matches_numpy_reference(length):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, length)).astype(np.float32)
    weight, bias = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    conv_state = rng.standard_normal((2, 6, 3)).astype(np.float32)
    y, new_state = cpu_ops.causal_conv1d(x, weight, bias, conv_state)
    y_ref, state_ref = cpu_ops.reference_causal_conv1d(x, weight, bias, conv_state)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(new_state, state_ref)
