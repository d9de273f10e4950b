"""ONNX Runtime sessions: execution provider choice, and the custom flavour's CPU ops.

`--provider cpu|cuda|tensorrt` maps to ORT's execution providers; CUDA and TensorRT need the
``onnxruntime-gpu`` package (which replaces ``onnxruntime``: never install both). The CPU
provider stays listed after a GPU one so nodes it lacks still run.

A custom-flavour graph has ``hybrid::SelectiveScan`` / ``hybrid::CausalConv1d`` nodes. On the
CPU they run as onnxruntime-extensions Python ops (`cpu_ops`: the fused C scan kernel that
PyTorch eager uses, or a numpy reference where it cannot be built); TensorRT runs them as
plugins (``hybrid-export --trt``).
"""

from __future__ import annotations

from pathlib import Path

from . import cpu_ops
from .errors import RuntimeUnavailableError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
CONTRIB_DOMAIN = "ai.onnx.contrib"  # the only domain onnxruntime-extensions' Python ops live in


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailableError("ONNX Runtime is not installed: pip install 'hybrid-mllm[onnx]'") from None
    return onnxruntime


def make_session(path: Path, *, provider: str = "cpu", custom_ops: bool = False, threads: int | None = None):
    """An InferenceSession for `path` on `provider`; `custom_ops` for a custom-flavour graph."""
    ort = import_ort()
    if provider not in PROVIDERS:
        raise RuntimeUnavailableError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        raise RuntimeUnavailableError(
            f"execution provider '{provider}' ({name}) is not in this onnxruntime (it has: {', '.join(available)}); "
            "install onnxruntime-gpu in place of onnxruntime "
            "(pip uninstall onnxruntime && pip install onnxruntime-gpu)")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = [name] if name == PROVIDERS["cpu"] else [name, PROVIDERS["cpu"]]
    if not custom_ops:
        return ort.InferenceSession(str(path), options, providers=providers)
    if provider != "cpu":
        raise RuntimeUnavailableError("a custom-flavour export runs its hybrid:: ops on the cpu provider only "
                                      "(as Python ops) until the TensorRT plugins exist; use --provider cpu "
                                      "or export with --scan standard")
    options.register_custom_ops_library(_cpu_ops_library())
    return ort.InferenceSession(_in_contrib_domain(path), options, providers=providers)


def _in_contrib_domain(path: Path) -> bytes:
    """The model with its hybrid:: nodes moved to onnxruntime-extensions' domain (weights loaded
    into the bytes, so the model must stay under protobuf's 2 GB limit)."""
    import onnx

    from .custom_ops import DOMAIN

    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.domain == DOMAIN:
            node.domain = CONTRIB_DOMAIN
    for entry in model.opset_import:
        if entry.domain == DOMAIN:
            entry.domain = CONTRIB_DOMAIN
    return model.SerializeToString()


_registered = False


def _cpu_ops_library() -> str:
    """Register the `cpu_ops` (once) and return onnxruntime-extensions' library path."""
    global _registered
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise RuntimeUnavailableError(
            "running a custom-flavour export on the CPU needs onnxruntime-extensions (its hybrid:: ops run as "
            "Python ops): pip install onnxruntime-extensions, or export with --scan standard") from None
    if not _registered:
        f32, i64 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64
        onnx_op(op_type="SelectiveScan", inputs=[f32] * 9, outputs=[f32, f32], attrs={"softplus": i64})(
            cpu_ops.selective_scan)
        onnx_op(op_type="CausalConv1d", inputs=[f32] * 4, outputs=[f32, f32])(cpu_ops.causal_conv1d)
        _registered = True
    return get_library_path()
