"""Mamba's TensorRT plugins without TensorRT: the shape and type rules against the real custom
export and against PyTorch, the kernels' wrappers in TensorRT's calling convention (Triton's
interpreter on CPU), their AOT compilation to PTX, and the launch geometry.
"""

import json
import os
import subprocess
import sys
import textwrap

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

onnx = pytest.importorskip("onnx")

from _trt_fixtures import export_tiny  # noqa: E402

from hybrid_mllm.plugins.mixers import trt_shapes as shapes  # noqa: E402
from hybrid_mllm.plugins.mixers.ops import causal_conv1d_op, selective_scan_op  # noqa: E402
from hybrid_mllm.plugins.mixers.ops_onnx import DOMAIN  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("trt"))


# ---------------------------------------------------------------------------------------
# Shape rules
# ---------------------------------------------------------------------------------------


def _value_shapes(model) -> dict:
    """Every named value's shape in the graph (inputs, outputs, value_info, initializers)."""
    out = {}
    for v in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if v.type.tensor_type.HasField("shape"):
            out[v.name] = tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def test_shape_rules_match_the_custom_export(tiny):
    """For every hybrid:: node of the exported graph: the rule's output shapes (from the node's
    input shapes, ints and axis names as the exporter recorded them) are the exporter's."""
    model = onnx.load(str(tiny[2]), load_external_data=False)
    known = _value_shapes(model)
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    assert sorted(n.op_type for n in nodes) == ["CausalConv1d", "SelectiveScan"]
    for node in nodes:
        spec = shapes.OPS[node.op_type]
        inputs = [known[name] for name in node.input]
        shapes.check_shapes(spec, inputs)
        assert shapes.output_shapes(spec, inputs) == tuple(known[name] for name in node.output), node.op_type
        assert [a.name for a in node.attribute] == list(spec.attributes)


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (3, 17)])
def test_shape_and_type_rules_match_pytorch(batch, length):
    g = torch.Generator().manual_seed(0)
    d, n, k = 6, 4, 4
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    scan_in = (r(batch, d, length), r(batch, d, length), -r(d, n).abs(), r(batch, n, length), r(batch, n, length),
               r(d), r(batch, d, length), r(d), r(batch, d, n))
    conv_in = (r(batch, d, length), r(d, k), r(d), r(batch, d, k - 1))
    for spec, args, op in ((shapes.SCAN, scan_in, lambda *a: selective_scan_op(*a, True)),
                           (shapes.CONV, conv_in, causal_conv1d_op)):
        outs = op(*args)
        assert shapes.output_shapes(spec, [tuple(a.shape) for a in args]) == tuple(tuple(o.shape) for o in outs)
        assert shapes.output_types(spec, [a.dtype for a in args]) == tuple(o.dtype for o in outs)


def test_shape_check_names_every_mismatch():
    good = [("b", "d", "l"), ("b", "d", "l"), ("d", 8), ("b", 8, "l"), ("b", 8, "l"), ("d",), ("b", "d", "l"),
            ("d",), ("b", "d", 8)]
    shapes.check_shapes(shapes.SCAN, good)
    bad = list(good)
    bad[3] = ("b", 7, "l")
    with pytest.raises(shapes.PluginShapeError, match=r"A\[1\] = 8, B\[1\] = 7, C\[1\] = 8, state\[2\] = 8 must agree"):
        shapes.check_shapes(shapes.SCAN, bad)
    with pytest.raises(shapes.PluginShapeError, match=r"weight\[1\] -1 = 3, conv_state\[2\] = 2 must agree"):
        shapes.check_shapes(shapes.CONV, [(2, 6, 5), (6, 4), (6,), (2, 6, 2)])
    with pytest.raises(shapes.PluginShapeError, match="u has rank 2, expected 3"):
        shapes.check_shapes(shapes.SCAN, [("b", "d")] + good[1:])


def test_autotune_types_pair_activations_and_keep_float32_parameters():
    assert shapes.autotune_types(shapes.SCAN) == ", ".join(
        ["FP32|FP16|BF16", "FP32", "FP32", "FP32|FP16|BF16", "FP32|FP16|BF16", "FP32", "FP32|FP16|BF16", "FP32",
         "FP32", "FP32|FP16|BF16", "FP32"])
    assert shapes.autotune_types(shapes.CONV) == ", ".join(["FP32|FP16|BF16"] * 6)


# ---------------------------------------------------------------------------------------
# Plugin kernels: the wrappers in TensorRT's calling convention (interpreted on CPU)
# ---------------------------------------------------------------------------------------

def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


needs_triton = pytest.mark.skipif(not _has_triton(), reason="triton is not installed: pip install triton")
DEVICE = "cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu"


@needs_triton
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize(("batch", "channels", "d_state", "length"), [(1, 3, 4, 1), (2, 70, 5, 9)])
def test_scan_wrapper_matches_ref(softplus, batch, channels, d_state, length):
    from hybrid_mllm.plugins.mixers import trt_kernels as kernels
    from hybrid_mllm.plugins.mixers.scan_ref import selective_scan_ref

    g = torch.Generator().manual_seed(length)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    args = (r(batch, channels, length), r(batch, channels, length).abs() * 0.3, -r(channels, d_state).abs(),
            r(batch, d_state, length), r(batch, d_state, length), r(channels), r(batch, channels, length),
            r(channels) * 0.1, r(batch, channels, d_state))
    y, h = torch.empty_like(args[0]), torch.empty_like(args[-1])
    kernels.launch_scan(*args, y, h, softplus=softplus)
    y_ref, h_ref = selective_scan_ref(*args[:8], softplus, args[8])
    for got, ref in ((y, y_ref), (h, h_ref)):
        diff = (got - ref).abs().max().item() / max(1.0, ref.abs().max().item())
        assert diff <= 1e-4, diff


@needs_triton
@pytest.mark.parametrize(("kernel_size", "length"), [(4, 1), (4, 2), (4, 70), (2, 5), (1, 3)])
def test_conv_wrapper_matches_pytorch_and_writes_the_new_state(kernel_size, length):
    from hybrid_mllm.plugins.mixers import trt_kernels as kernels
    from hybrid_mllm.plugins.mixers.conv import causal_conv1d

    g = torch.Generator().manual_seed(length)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    x, w, b, state = r(2, 20, length), r(20, kernel_size), r(20), r(2, 20, kernel_size - 1)
    y, new_state = torch.empty_like(x), torch.empty_like(state)
    kernels.launch_conv(x, w, b, state, y, new_state)
    y_ref, state_ref = causal_conv1d(x, w, b, state)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_state, state_ref, atol=0, rtol=0)


@needs_triton
def test_aot_kernels_compile_to_ptx_in_tensorrts_argument_order():
    """Compiled for sm_90 without a GPU (Triton needs no device to emit PTX): inputs, int32
    scalars, outputs, in that order, and no Triton global scratch (TensorRT passes none).
    Triton appends two scratch pointers TensorRT does not pass; unused, as checked."""
    script = textwrap.dedent("""
        import json, re
        from triton.backends.compiler import GPUTarget
        from hybrid_mllm.plugins.mixers import trt_kernels as kernels
        target = GPUTarget("cuda", 90, 32)
        out = {}
        for name, k in (("scan", kernels.compile_scan("FP16", softplus=True, d_state=16, target=target)),
                        ("conv", kernels.compile_conv("BF16", kernel_size=4, target=target))):
            head = k.ptx[k.ptx.index(".entry"):].split(")")[0]
            out[name] = {"name": k.name, "params": re.findall(r"\\.param \\.(\\w+)", head), "block_x": k.block_x}
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    ptr, i32 = "u64", "u32"
    assert out["scan"]["name"] == "_scan_aot_kernel" and out["scan"]["block_x"] == 64
    assert out["scan"]["params"][:14] == [ptr] * 9 + [i32] * 3 + [ptr] * 2
    assert out["conv"]["params"][:8] == [ptr] * 4 + [i32] * 2 + [ptr] * 2
    assert all(p == ptr for p in out["scan"]["params"][14:] + out["conv"]["params"][8:])


def test_launch_geometry_is_generic_over_dims():
    from hybrid_mllm.plugins.mixers import trt_kernels as kernels

    assert kernels.scan_grid((3, 130, 7)) == (3, 3, 1)
    assert kernels.scan_scalars((3, 130, 7), (130, 16)) == (130, 7, 16)
    assert kernels.conv_grid((2, 17, 129)) == (3, 2, 2)
    assert kernels.conv_constexprs(4)["K1_POW2"] == 4 and kernels.conv_constexprs(1)["K1_POW2"] == 1
    assert kernels.scan_constexprs(True, 5)["BLOCK_N"] == 8
    symbolic = kernels.scan_grid(("B", "D", "L"), lambda a, b: f"cdiv({a}, {b})")
    assert symbolic == ("cdiv(D, 64)", "B", 1)
