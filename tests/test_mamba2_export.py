"""Mamba-2 exports through its declaration (`plugins/mixers/mamba2_export.py`), like Mamba-1.

- the export contract (`hybrid_mllm.testing.check_export`) in both flavours;
- a hybrid with Mamba-2, attention and Mamba-1 layers: ``export_onnx`` (its parity gate runs) in
  both flavours, then ONNX Runtime generates the tokens PyTorch generates; ``hybrid-export --onnx``
  and ``hybrid-run --onnx`` print what ``hybrid-run --checkpoint`` prints;
- the ``hybrid::SSDScan`` TensorRT plugin without TensorRT: its shape and type rules against the
  custom export and against PyTorch, its kernel wrapper in TensorRT's calling convention (Triton's
  interpreter on CPU) against the reference, its AOT compilation to PTX, its launch geometry.
"""

import json
import os
import subprocess
import sys
import textwrap

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import onnx
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.checkpoint import load_checkpoint, save_checkpoint
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.export import cli_export
from hybrid_mllm.export.onnx import export_onnx
from hybrid_mllm.plugins.mixers import ssd_trt_kernels as kernels
from hybrid_mllm.plugins.mixers import trt_shapes as shapes
from hybrid_mllm.plugins.mixers.mamba2 import Mamba2
from hybrid_mllm.plugins.mixers.mamba2_export import MAMBA2_EXPORT
from hybrid_mllm.plugins.mixers.ssd_export import ssd_scan_export
from hybrid_mllm.plugins.mixers.ssd_ops_torch import ssd_scan_op
from hybrid_mllm.plugins.mixers.ssd_ref import ssd_scan_ref
from hybrid_mllm.plugins.mixers.ssd_trt_shapes import SSD
from hybrid_mllm.runtime import cli_run
from hybrid_mllm.runtime.generate import GenerationConfig, TorchDecoder, generate
from hybrid_mllm.runtime.onnx import load_onnx
from hybrid_mllm.testing import SSD_CASES, check_export
from hybrid_mllm.testing.ssd_contract import ssd_inputs

CONFIG = """
model:
  vocab_size: 263
  d_model: 32
  n_layer: 3
  layers: [mamba2, attention, mamba]
  mixers:
    mamba2: {d_state: 16, d_conv: 4, expand: 2, headdim: 8, ngroups: 2, chunk_size: 16}
    mamba: {d_state: 8, d_conv: 4, expand: 2}
    attention: {n_head: 2, n_kv_head: 1}
  mlp: {d_hidden: 64}
"""
OPTIONS = {"d_state": 8, "headdim": 4, "ngroups": 2, "chunk_size": 16}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("mamba2")
    (root / "config.yaml").write_text(CONFIG)
    config = load_config(root / "config.yaml")
    model, tokenizer = build_mllm(config, seed=0)
    return save_checkpoint(model.eval(), config, root / "ckpt", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def custom_export(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("custom") / "out"
    return out, export_onnx(checkpoint, out, flavour="custom")


def test_registered_and_listed():
    assert get_registry().export_of(Mamba2(16, **OPTIONS)) is MAMBA2_EXPORT
    r = subprocess.run([sys.executable, "-c", "from hybrid_mllm.core.cli_plugins import entry; entry()"],
                       capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if "Mamba2" in line and "SSDScan" in line)
    assert "hybrid::SSDScan" in line


@pytest.mark.parametrize("flavour", ["standard", "custom"])
def test_export_contract(flavour):
    measured = check_export(Mamba2, d_model=16, options=OPTIONS, flavour=flavour)
    assert max(measured.values()) < 1e-4


@pytest.mark.parametrize("case", SSD_CASES, ids=str)
def test_export_kernel_matches_ref(case):
    """The standard-op SSD the node's body traces, run eagerly (L = 1: the one-step branch)."""
    inputs = ssd_inputs(*case)
    inputs.pop("chunk_size")
    batch, _, nheads, headdim = inputs["x"].shape
    inputs["D"] = inputs["D"] if inputs["D"] is not None else torch.zeros(nheads)
    if inputs["state"] is None:
        inputs["state"] = torch.zeros(batch, nheads, headdim, inputs["B"].shape[3])
    y, h = ssd_scan_export(**inputs)
    y_ref, h_ref = ssd_scan_ref(**inputs)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def _generate_like_pytorch(checkpoint, out_dir):
    loaded = load_onnx(out_dir)
    lm = load_checkpoint(checkpoint).model.lm.eval()
    g = torch.Generator().manual_seed(0)
    embeds, mask = torch.randn(2, 70, 32, generator=g), torch.ones(2, 70, dtype=torch.bool)  # 70: two SSD chunks
    mask[0, :6] = False
    config = GenerationConfig(max_new_tokens=8)
    want = generate(TorchDecoder(lm), embeds, mask, config).tokens
    assert generate(loaded.decoder, embeds, mask, config).tokens == want


def test_custom_flavour_generates_like_pytorch(checkpoint, custom_export):
    out, manifest = custom_export
    assert manifest["custom_ops"]["ops"] == ["hybrid::CausalConv1d", "hybrid::SSDScan", "hybrid::SelectiveScan"]
    assert max(manifest["tolerances"]["measured"]["decoder"].values()) < 1e-4
    _generate_like_pytorch(checkpoint, out)


def test_cli_export_and_run_answer_like_pytorch(checkpoint, tmp_path, capsys):
    """hybrid-export --onnx (standard flavour: no custom-op library) and hybrid-run --onnx."""
    out = tmp_path / "out"
    assert cli_export.main(["--onnx", str(checkpoint), str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["flavour"] == "standard" and manifest["custom_ops"] is None
    model = onnx.load(str(out / "decoder.onnx"), load_external_data=False)
    assert "SSDScan" in {f.name for f in model.functions}, "the node's standard-op definition is in the model"
    _generate_like_pytorch(checkpoint, out)
    capsys.readouterr()
    args = ["--prompt", "Count to three.", "--max-new-tokens", "8"]
    assert cli_run.main(["--checkpoint", str(checkpoint), *args]) == 0
    expected = capsys.readouterr().out
    assert cli_run.main(["--onnx", str(out), *args]) == 0
    assert capsys.readouterr().out == expected


# ---------------------------------------------------------------------------------------
# The TensorRT plugin's rules and kernel, without TensorRT
# ---------------------------------------------------------------------------------------


def test_shape_rules_match_the_custom_export(custom_export):
    """For the SSDScan nodes of the exported graph: the rule's output shapes (from the node's input
    shapes, ints and axis names as the exporter recorded them) are the exporter's."""
    model = onnx.load(str(custom_export[0] / "decoder.onnx"), load_external_data=False)
    known = {v.name: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
             for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)}
    known.update({init.name: tuple(init.dims) for init in model.graph.initializer})
    nodes = [n for n in model.graph.node if n.op_type == SSD.name]
    assert len(nodes) == 1 and not nodes[0].attribute
    inputs = [known[name] for name in nodes[0].input]
    shapes.check_shapes(SSD, inputs)
    assert shapes.output_shapes(SSD, inputs) == tuple(known[name] for name in nodes[0].output)


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (3, 17)])
def test_shape_and_type_rules_match_pytorch(batch, length):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    args = (r(batch, length, 4, 3), r(batch, length, 4).abs(), -r(4).abs(), r(batch, length, 2, 5),
            r(batch, length, 2, 5), r(4), r(batch, 4, 3, 5))
    outs = ssd_scan_op(*args)
    assert shapes.output_shapes(SSD, [tuple(a.shape) for a in args]) == tuple(tuple(o.shape) for o in outs)
    assert shapes.output_types(SSD, [a.dtype for a in args]) == tuple(o.dtype for o in outs)


def test_shape_check_names_every_mismatch():
    good = [("b", "l", 8, 4), ("b", "l", 8), (8,), ("b", "l", 2, 16), ("b", "l", 2, 16), (8,), ("b", 8, 4, 16)]
    shapes.check_shapes(SSD, good)
    bad = list(good)
    bad[6] = ("b", 8, 4, 15)
    with pytest.raises(shapes.PluginShapeError, match=r"B\[3\] = 16, C\[3\] = 16, state\[3\] = 15 must agree"):
        shapes.check_shapes(SSD, bad)
    with pytest.raises(shapes.PluginShapeError, match="x has rank 3, expected 4"):
        shapes.check_shapes(SSD, [("b", "l", 8)] + good[1:])


def test_autotune_types_pair_activations_and_keep_float32_state():
    act = "FP32|FP16|BF16"
    assert shapes.autotune_types(SSD) == f"{act}, FP32, FP32, {act}, {act}, FP32, FP32, {act}, FP32"


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


needs_triton = pytest.mark.skipif(not _has_triton(), reason="triton is not installed: pip install triton")
DEVICE = "cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu"


@needs_triton
@pytest.mark.parametrize(("batch", "length", "nheads", "headdim", "ngroups", "d_state"),
                         [(1, 1, 2, 4, 1, 4), (2, 70, 4, 70, 2, 5)], ids=str)
def test_kernel_wrapper_matches_ref(batch, length, nheads, headdim, ngroups, d_state):
    """L = 70: two chunks of 64; headdim 70: two blocks of rows; 2 groups of 2 heads."""
    g = torch.Generator().manual_seed(length)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)
    args = (r(batch, length, nheads, headdim), r(batch, length, nheads).abs() * 0.3, -r(nheads).abs(),
            r(batch, length, ngroups, d_state), r(batch, length, ngroups, d_state), r(nheads),
            r(batch, nheads, headdim, d_state))
    y, h = torch.empty_like(args[0]), torch.empty_like(args[-1])
    kernels.launch_ssd(*args, y, h)
    y_ref, h_ref = ssd_scan_ref(*args)
    for got, ref in ((y, y_ref), (h, h_ref)):
        diff = (got - ref).abs().max().item() / max(1.0, ref.abs().max().item())
        assert diff <= 1e-4, diff


@needs_triton
def test_aot_kernel_compiles_to_ptx_in_tensorrts_argument_order():
    """Compiled for sm_90 without a GPU: 7 input pointers, 5 int32 scalars, 2 output pointers, in
    that order (Triton's two trailing scratch pointers unused), within an H100 block's shared memory."""
    script = textwrap.dedent("""
        import json, re
        from triton.backends.compiler import GPUTarget
        from hybrid_mllm.plugins.mixers import ssd_trt_kernels as kernels
        k = kernels.compile_ssd("BF16", headdim=64, d_state=128, target=GPUTarget("cuda", 90, 32))
        head = k.ptx[k.ptx.index(".entry"):].split(")")[0]
        print(json.dumps({"name": k.name, "params": re.findall(r"\\.param \\.(\\w+)", head),
                          "block_x": k.block_x, "shared": k.shared}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    ptr, i32 = "u64", "u32"
    assert out["name"] == "_ssd_aot_kernel" and out["block_x"] == 128
    assert out["params"][:14] == [ptr] * 7 + [i32] * 5 + [ptr] * 2
    assert all(p == ptr for p in out["params"][14:])
    assert 0 < out["shared"] <= 227 * 1024


def test_launch_geometry_is_generic_over_dims():
    assert kernels.ssd_grid((3, 100, 8, 130), 130) == (8, 3, 3)
    assert kernels.ssd_scalars((3, 100, 8, 130), (3, 100, 2, 16)) == (100, 8, 2, 130, 16)
    assert kernels.ssd_constexprs("FP32", 64, 5) == {"DOT": "ieee", "BLOCK_Q": 64, "BLOCK_P": 64, "BLOCK_N": 16}
    symbolic = kernels.ssd_grid(("B", "L", "H", "P"), 64, lambda a, b: f"cdiv({a}, {b})")
    assert symbolic == ("H", "cdiv(P, 64)", "B")


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not (_has_tensorrt() and torch.cuda.is_available()),
                    reason="needs tensorrt and a CUDA GPU (scripts/gpu_check.sh runs this)")
@pytest.mark.parametrize("plugin_impl", ["aot", "jit"])
def test_engine_passes_the_gate_and_generates_like_pytorch(checkpoint, tmp_path, plugin_impl):
    """The hybrid's engine: hybrid::SSDScan and both convs as our plugins, Mamba-1's scan too."""
    from hybrid_mllm.export.trt.build import BuildOptions
    from hybrid_mllm.export.trt.exporter import TOLERANCE, export_trt
    from hybrid_mllm.runtime.trt import profiles
    from hybrid_mllm.runtime.trt.engine import load_trt

    options = BuildOptions(plugin_impl=plugin_impl, limits=profiles.ProfileLimits(max_batch=4, max_seq=128,
                                                                                 max_past=512))
    info = export_trt(checkpoint, tmp_path / "engine", options=options, cache_dir=tmp_path / "cache")
    assert max(info["tolerances"]["measured"].values()) <= TOLERANCE["fp32"]
    loaded = load_trt(tmp_path / "engine")
    lm = load_checkpoint(checkpoint).model.lm.eval()
    g = torch.Generator().manual_seed(0)
    embeds, mask = torch.randn(2, 90, 32, generator=g), torch.ones(2, 90, dtype=torch.bool)
    mask[0, :7] = False
    config = GenerationConfig(max_new_tokens=12)
    assert generate(loaded.decoder, embeds, mask, config).tokens == generate(TorchDecoder(lm), embeds, mask, config).tokens
