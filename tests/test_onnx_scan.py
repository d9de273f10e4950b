"""The export scan kernel (chunked_export) against ref in PyTorch, and its ONNX function in ONNX Runtime.

Tolerance: the scan contract's 1e-4 relative to max(1, |ref|) (measured ~1e-6 in float32).
The ONNX function is exported once per process (cached) and run at lengths and batch
sizes it was not traced with (it saw batch 2, length 37).
"""

import numpy as np
import pytest
import torch

from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.scan import selective_scan
from hybrid_mllm.testing import check_scan_matches_ref
from hybrid_mllm.testing.scan_contract import scan_inputs

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402

from hybrid_mllm.export.onnx.exporter import DEFAULT_OPSETS  # noqa: E402
from hybrid_mllm.export.onnx.functions import node_function  # noqa: E402
from hybrid_mllm.plugins.mixers.mamba_export import mamba_ops  # noqa: E402
from hybrid_mllm.plugins.mixers.ops_onnx import DOMAIN, SCAN_NODE  # noqa: E402

KERNEL = get_registry().get("scan_kernel", "chunked_export")
# (batch, D, N, L, with_state, with_z, with_delta_bias): one token, exact chunks, partial chunks
EDGE_CASES = [(2, 4, 3, 1, True, True, True), (1, 5, 4, 16, True, True, False), (3, 3, 2, 17, False, True, True),
              (1, 4, 4, 48, True, False, True)]


@pytest.mark.parametrize("case", EDGE_CASES, ids=str)
def test_kernel_matches_ref_at_chunk_edges(case):
    check_scan_matches_ref(KERNEL.fn, case)


def test_kernel_is_export_safe_and_never_auto():
    assert KERNEL.export_safe
    assert all(rank < get_registry().get("scan_kernel", "chunked").priority[d] for d, rank in KERNEL.priority.items())


def test_kernel_is_stable_with_strong_decay():
    """log-decays of -1000 per token: only non-positive exponents, so no inf/NaN."""
    inputs = scan_inputs(1, 4, 4, 40, True, False, False)
    inputs["delta"] = inputs["delta"].abs() * 0 + 100.0
    inputs["softplus"] = False
    y, h = selective_scan(**inputs, impl="chunked_export")
    y_ref, _ = selective_scan(**inputs, impl="ref")
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def scan_session():
    """A one-node model: hybrid::SelectiveScan, defined by the exported standard-op function."""
    function = onnx.FunctionProto()
    opset = DEFAULT_OPSETS["standard"]  # the export tests' function: exported once per process
    function.ParseFromString(node_function(mamba_ops()[0].node, opset, torch.float32))
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state"]
    sessions = {}
    for softplus in (0, 1):
        node = helper.make_node(SCAN_NODE, names, ["y", "new_state"], domain=DOMAIN, softplus=softplus)
        graph = helper.make_graph(
            [node], "scan", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names],
            [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("y", "new_state")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                        helper.make_opsetid(DOMAIN, 1)], functions=[function])
        sessions[softplus] = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sessions


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (3, 1), (1, 7), (2, 16), (3, 17), (1, 300)])
@pytest.mark.parametrize("softplus", [False, True])
def test_onnx_function_matches_ref_at_unseen_shapes(scan_session, batch, length, softplus):
    inputs = scan_inputs(batch, 5, 3, length, True, True, True, seed=length)
    inputs["softplus"] = softplus
    if not softplus:  # the scan needs delta >= 0 (decays <= 1) when softplus does not ensure it
        inputs["delta"], inputs["delta_bias"] = inputs["delta"].abs(), inputs["delta_bias"].abs()
    y_ref, h_ref = selective_scan(**inputs, impl="ref")
    feed = {k: inputs[k].numpy() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "state")}
    y, h = scan_session[int(softplus)].run(None, feed)
    for got, ref in ((y, y_ref), (h, h_ref)):
        scale = max(1.0, float(ref.abs().max()))
        assert np.abs(got - ref.numpy()).max() <= 1e-4 * scale
