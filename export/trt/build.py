"""Decoder engine build: the ``custom`` ONNX graph -> a TensorRT plan, cached.

`prepare_graph` marks each custom node for the ONNX parser (``plugin_namespace`` and ``aot``);
the plugins are those of the components' export declarations (`hybrid_mllm.runtime.trt.plugins`).
`build_engine` registers the plugins, parses the graph with its external weights,
adds the prefill and decode profiles (`profiles`), sets the precision and builds, reusing a
cached plan when the key (`cache.cache_key`: graph bytes, TensorRT version, GPU name and
compute capability, build options) matches.

Precision: ``fp32`` builds a strongly typed network (TF32 off, so it matches PyTorch's
float32). ``fp16`` / ``bf16`` use TensorRT 10's weakly typed mode (builder flags; the plugins
then run in the activation type TensorRT picks from their autotune combinations). TensorRT
11 removed those flags (precision must be in the graph, and the custom-flavour graph is
exported in float32), so there ``fp16`` / ``bf16`` are refused with a one-line error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
from onnx import helper

from hybrid_mllm.core.exportable import custom_nodes
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.runtime.trt import profiles
from hybrid_mllm.runtime.trt.errors import import_tensorrt, version_tuple
from hybrid_mllm.runtime.trt.platform import platform_here
from hybrid_mllm.runtime.trt.plugins import plugin_nodes, register_plugins

from . import cache
from .errors import EngineBuildError

PRECISIONS = ("fp32", "fp16", "bf16")
PLUGIN_IMPLS = ("aot", "jit")
WEAK_TYPING_REMOVED = (11,)  # TensorRT major version without the FP16 / BF16 builder flags


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    limits: profiles.ProfileLimits = field(default_factory=profiles.ProfileLimits)
    plugin_impl: str = "aot"  # aot: PTX in the engine (no Python at run time); jit: Python callbacks

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineBuildError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.plugin_impl not in PLUGIN_IMPLS:
            raise EngineBuildError(f"unknown plugin implementation {self.plugin_impl!r}: choose aot or jit")
        self.limits.check()

    def to_dict(self) -> dict:
        return {"precision": self.precision, "limits": self.limits.to_dict(), "plugin_impl": self.plugin_impl}


def prepare_graph(model: onnx.ModelProto, *, aot: bool) -> onnx.ModelProto:
    """A copy of `model` whose custom nodes carry ``plugin_namespace`` (their domain: how TensorRT
    < 10.10 finds the plugin's namespace) and ``aot`` (1: the AOT implementation, 0: the Python
    one). Raises `EngineBuildError` for a custom node no TensorRT plugin implements."""
    domains = {n.domain for n in custom_nodes(e.obj for e in get_registry().entries("export")).values()}
    with_plugin = plugin_nodes()
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    for node in prepared.graph.node:
        node_id = f"{node.domain}::{node.op_type}"
        if node.domain not in domains:
            continue
        if node_id not in with_plugin:
            raise EngineBuildError(f"the graph has a {node_id} node, which no TensorRT plugin implements "
                                   f"(known: {', '.join(sorted(with_plugin)) or 'none'}): the export declaration of "
                                   "the component that writes it has no tensorrt plugin")
        kept = [a for a in node.attribute if a.name not in ("plugin_namespace", "aot")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend([helper.make_attribute("plugin_namespace", node.domain),
                               helper.make_attribute("aot", int(aot))])
    return prepared


@dataclass
class BuiltEngine:
    plan: bytes
    info: dict  # engine.json: key, platform, options, profiles, inputs, outputs
    cached: bool


def build_engine(onnx_path: Path, graph_inputs: list[dict], options: BuildOptions, *, cache_dir: Path | None = None,
                 log: Callable[[str], None] = lambda message: None) -> BuiltEngine:
    """Build (or take from the cache) the engine of the decoder graph at `onnx_path`, whose
    inputs (manifest entries) are `graph_inputs`."""
    options.check()
    trt = import_tensorrt()
    register_plugins()
    platform = platform_here()
    files = [onnx_path] + ([onnx_path.with_name(onnx_path.name + ".data")]
                           if onnx_path.with_name(onnx_path.name + ".data").exists() else [])
    key = cache.cache_key(cache.graph_digest(files), platform, options.to_dict())
    plist = profiles.decoder_profiles(graph_inputs, options.limits)
    info = {"key": key, "platform": {**asdict(platform), "compute_capability": list(platform.compute_capability)},
            "options": options.to_dict(), "profiles": [{"name": p.name, "shapes": p.shapes} for p in plist]}
    cache_dir = cache.default_cache_dir() if cache_dir is None else Path(cache_dir)
    cached = cache_dir / f"{key}.plan"
    if cached.is_file():
        log(f"engine cache hit: {cached}")
        return BuiltEngine(cached.read_bytes(), info, True)
    log(f"building the TensorRT engine ({options.precision}, {options.plugin_impl} plugins) for {platform.describe()}")
    plan = _build(trt, onnx_path, plist, options)
    cache.store(cache_dir, key, plan)
    return BuiltEngine(plan, info, False)


def _network_flags(trt, precision: str) -> int:
    major = version_tuple(trt.__version__)[0]
    if precision != "fp32" and major >= WEAK_TYPING_REMOVED[0]:
        raise EngineBuildError(f"TensorRT {trt.__version__} builds strongly typed networks only, and the custom-flavour "
                               f"graph is float32: build with --precision fp32 (or use TensorRT 10.x for {precision})")
    if precision == "fp32":
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _build(trt, onnx_path: Path, plist: list[profiles.Profile], options: BuildOptions) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, options.precision))
    parser = trt.OnnxParser(network, logger)
    model = prepare_graph(onnx.load(str(onnx_path), load_external_data=False), aot=options.plugin_impl == "aot")
    if not parser.parse(model.SerializeToString(), str(onnx_path)):  # the path locates the external weights
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if options.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # float32 means float32: parity with PyTorch
    elif options.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif options.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    dynamic = {network.get_input(i).name for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)}
    for profile in plist:
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes.items():
            if name in dynamic:
                trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError("TensorRT could not build the engine (run with --verbose for its log)")
    return bytes(plan)


def write_engine(out_dir: Path, plan: bytes, info: dict, *, plan_name: str = "decoder.plan") -> dict:
    """Write the plan and ``engine.json`` (its identity, options, profiles and `info`'s extras)
    into `out_dir`; returns engine.json's content."""
    (out_dir / plan_name).write_bytes(plan)
    body = {**info, "plan": plan_name, "plan_bytes": len(plan)}
    (out_dir / "engine.json").write_text(json.dumps(body, indent=2) + "\n")
    return body
