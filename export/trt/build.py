"""Decoder engine build: the ``custom`` ONNX graph -> a TensorRT plan, cached.

`prepare_graph` marks each ``hybrid::`` node for the ONNX parser (``plugin_namespace`` and
``aot``); `build_engine` registers the plugins, parses the graph with its external weights,
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

from . import cache, profiles
from .errors import EngineBuildError, import_tensorrt, version_tuple
from .plugins import NAMESPACE, register_plugins
from .shapes import OPS

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
    """A copy of `model` whose ``hybrid::`` nodes carry ``plugin_namespace`` (how TensorRT < 10.10
    finds the plugin's namespace) and ``aot`` (1: the AOT implementation, 0: the Python one).
    Raises `EngineBuildError` for a ``hybrid`` node no plugin implements."""
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    for node in prepared.graph.node:
        if node.domain != NAMESPACE:
            continue
        if node.op_type not in OPS:
            raise EngineBuildError(f"the graph has a {NAMESPACE}::{node.op_type} node, which no TensorRT plugin "
                                   f"implements (known: {', '.join(OPS)}); re-export with this version")
        kept = [a for a in node.attribute if a.name not in ("plugin_namespace", "aot")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend([helper.make_attribute("plugin_namespace", NAMESPACE),
                               helper.make_attribute("aot", int(aot))])
    return prepared


def platform_here() -> cache.Platform:
    """This machine's TensorRT version and GPU (device 0)."""
    import torch

    trt = import_tensorrt()
    return cache.Platform(trt.__version__, torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)))


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
