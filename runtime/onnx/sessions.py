"""ONNX Runtime sessions: execution provider choice, and the custom flavour's CPU ops.

`--provider cpu|cuda|tensorrt` maps to ORT's execution providers; CUDA and TensorRT need the
``onnxruntime-gpu`` package (which replaces ``onnxruntime``: never install both). The CPU
provider stays listed after a GPU one so nodes it lacks still run.

A custom-flavour graph has custom nodes (Mamba's ``hybrid::SelectiveScan`` and
``hybrid::CausalConv1d``, a plugin's own). On the CPU they run as onnxruntime-extensions
Python ops: the ``cpu`` implementation of each node in the registered export declarations
(`hybrid_mllm.core.exportable.CustomNode`); TensorRT runs them as plugins (``hybrid-export --trt``).
"""

from __future__ import annotations

from pathlib import Path

from hybrid_mllm.core.exportable import CustomNode, custom_nodes
from hybrid_mllm.core.registry import get_registry

from ..errors import RuntimeUnavailableError

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
        raise RuntimeUnavailableError("a custom-flavour export runs its custom nodes on the cpu provider only "
                                      "(as Python ops); use --provider cpu, hybrid-export --trt for TensorRT, "
                                      "or export with --scan standard")
    nodes = custom_nodes(e.obj for e in get_registry().entries("export"))
    options.register_custom_ops_library(_cpu_ops_library(nodes))
    return ort.InferenceSession(_in_contrib_domain(path, {n.domain for n in nodes.values()}), options,
                                providers=providers)


def _in_contrib_domain(path: Path, domains: set[str]) -> bytes:
    """The model with its custom nodes moved to onnxruntime-extensions' domain (weights loaded
    into the bytes, so the model must stay under protobuf's 2 GB limit)."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.domain in domains:
            node.domain = CONTRIB_DOMAIN
    for entry in model.opset_import:
        if entry.domain in domains:
            entry.domain = CONTRIB_DOMAIN
    return model.SerializeToString()


_registered: set[str] = set()  # onnxruntime-extensions keeps Python ops for the life of the process


def _cpu_ops_library(nodes: dict[str, CustomNode]) -> str:
    """Register each node's CPU implementation (once per node) and return onnxruntime-extensions'
    library path. The ops take and give float32 tensors (the custom flavour exports float32);
    their int attributes are the schema's."""
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise RuntimeUnavailableError(
            "running a custom-flavour export on the CPU needs onnxruntime-extensions (its custom nodes run as "
            "Python ops): pip install onnxruntime-extensions, or export with --scan standard") from None
    for node_id, node in nodes.items():
        if node.cpu is None or node_id in _registered:
            continue
        schema, f32 = node.schema(), PyCustomOpDef.dt_float
        onnx_op(op_type=node.name, inputs=[f32] * len(schema.inputs), outputs=[f32] * len(schema.outputs),
                attrs=dict.fromkeys(schema.attributes, PyCustomOpDef.dt_int64))(node.cpu)
        _registered.add(node_id)
    return get_library_path()
