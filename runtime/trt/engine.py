"""Run a decoder engine behind the `Decoder` protocol, states kept on the GPU.

- `TrtEngine`: the deserialized plan with one execution context per optimization profile
  (prefill, decode: `profiles`), run on torch CUDA tensors bound as its I/O, on torch's
  current stream;
- `TrtDecoder`: `hybrid_mllm.runtime.generate.Decoder` (prefill in chunks of the profile's
  max length, then one token per step), the state a tuple of CUDA tensors in graph order,
  never copied to the host between steps;
- `load_trt`: an engine directory (``hybrid-export --trt``) -> pipeline and decoder. The
  vision graphs run in ONNX Runtime (they have no custom nodes), the decoder in TensorRT,
  and the splice is the one every runtime shares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from hybrid_mllm.core.paths import confined

from ..onnx.load import OnnxPipeline, load_embeddings, load_text, open_session
from ..onnx.manifest import read_manifest
from ..onnx.model import OrtMLLM
from . import profiles
from .errors import EngineMismatchError, import_tensorrt, require_cuda
from .platform import Platform, check_compatible, platform_here
from .plugins import register_plugins

ENGINE_INFO = "engine.json"


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.bool: torch.bool, trt.int32: torch.int32, trt.int64: torch.int64}
    return table[dtype]


class TrtEngine:
    """A deserialized engine; `run(feed, profile)` binds torch CUDA tensors and executes."""

    def __init__(self, plan: bytes, n_profiles: int = 2):
        trt = self.trt = import_tensorrt()
        require_cuda()
        register_plugins()  # needed by engines built with the Python (jit) plugins; harmless otherwise
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineMismatchError("TensorRT could not deserialize the engine: rebuild it with hybrid-export --trt")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        stream = torch.cuda.current_stream().cuda_stream
        self.contexts = []
        for index in range(min(n_profiles, self.engine.num_optimization_profiles)):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, stream)
            self.contexts.append(context)
        torch.cuda.current_stream().synchronize()
        self._placeholder = torch.zeros(16, device="cuda")  # an address for empty tensors

    def _address(self, t: Tensor) -> int:
        return t.data_ptr() if t.numel() else self._placeholder.data_ptr()

    def run(self, feed: dict[str, Tensor], profile: int) -> dict[str, Tensor]:
        """feed: every input as a CUDA tensor -> every output (new CUDA tensors)."""
        context = self.contexts[profile]
        keep = []
        for name in self.inputs:
            t = feed[name].to(device="cuda", dtype=self.dtypes[name]).contiguous()
            keep.append(t)
            context.set_input_shape(name, tuple(t.shape))
            context.set_tensor_address(name, self._address(t))
        outputs = {}
        for name in self.outputs:
            t = torch.empty(tuple(context.get_tensor_shape(name)), dtype=self.dtypes[name], device="cuda")
            outputs[name] = t
            context.set_tensor_address(name, self._address(t))
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT failed to run the engine (see its log above)")
        return outputs


class TrtDecoder:
    """The `Decoder` protocol over a decoder engine. State: tuple of CUDA tensors, graph order."""

    def __init__(self, engine: TrtEngine, manifest: dict, embeddings: np.ndarray, limits: profiles.ProfileLimits):
        self.engine, self.limits = engine, limits
        self.layout = manifest["state"]
        self.embeddings = torch.from_numpy(np.ascontiguousarray(embeddings)).to("cuda", torch.float32)
        self.grow = next(((i, e["seq_dim"]) for i, e in enumerate(self.layout) if e["seq_dim"] is not None), None)

    def initial_state(self, batch: int) -> tuple[Tensor, ...]:
        return tuple(torch.zeros(state_shape(e, batch, 0), dtype=getattr(torch, e["dtype"]), device="cuda")
                     for e in self.layout)

    def past(self, state: tuple[Tensor, ...]) -> int:
        """Cached positions in `state` (0 for a model without attention)."""
        return 0 if self.grow is None else state[self.grow[0]].shape[self.grow[1]]

    def run(self, embeds: Tensor, mask: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One engine call: embeds (B, L, d), mask (B, L) bool on CUDA -> logits (B, vocab), new state."""
        batch, length = mask.shape
        profiles.check_fits(batch, self.past(state), length, self.limits)
        feed = {"inputs_embeds": embeds, "mask": mask, **{e["input"]: s for e, s in zip(self.layout, state)}}
        out = self.engine.run(feed, profiles.choose_profile(length))
        return out["logits"], tuple(out[e["output"]] for e in self.layout)

    @torch.no_grad()
    def prefill(self, embeds: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
        embeds = embeds.to("cuda", torch.float32)
        mask = mask.to("cuda", torch.bool)
        state = self.initial_state(embeds.shape[0])
        logits = None
        for start, stop in profiles.prefill_chunks(embeds.shape[1], self.limits.max_seq):
            logits, state = self.run(embeds[:, start:stop], mask[:, start:stop], state)
        return logits.float(), state

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        ids = token_ids.to("cuda")
        logits, state = self.run(self.embeddings[ids], torch.ones(ids.shape, dtype=torch.bool, device="cuda"), state)
        return logits.float(), state


def read_engine_info(engine_dir: Path) -> dict:
    """``engine.json``, checked: a `EngineMismatchError` (one line) for a missing or malformed file."""
    path = engine_dir / ENGINE_INFO
    if not path.is_file():
        raise EngineMismatchError(f"{path}: missing, so {engine_dir} is not a hybrid-export TensorRT directory "
                                  "(build one with: hybrid-export --trt CHECKPOINT OUT_DIR)")
    try:
        info = json.loads(path.read_text())
        _platform_of(info)  # each raises here on a malformed field, not later mid-load
        limits_of(info).check()
        _plan_path(engine_dir, info)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise EngineMismatchError(f"{path}: malformed ({what}); rebuild the engine with hybrid-export --trt") from None
    return info


def open_engine(engine_dir: Path, info: dict) -> TrtEngine:
    """The engine of `engine_dir`, after checking it was built for this GPU and TensorRT."""
    plan = _plan_path(engine_dir, info)
    check_compatible(_platform_of(info), platform_here(), engine=str(plan))
    return TrtEngine(plan.read_bytes())


def _platform_of(info: dict) -> Platform:
    built = info["platform"]
    return Platform(built["tensorrt"], built["gpu"], tuple(built["compute_capability"]))


def _plan_path(engine_dir: Path, info: dict) -> Path:
    return confined(engine_dir, info["plan"], where=f"the engine directory (named in {ENGINE_INFO})",
                    error=EngineMismatchError)


def limits_of(info: dict) -> profiles.ProfileLimits:
    return profiles.ProfileLimits(**info["options"]["limits"])


class LoadedTrt(NamedTuple):
    pipeline: Any
    decoder: TrtDecoder
    manifest: dict
    info: dict


def load_trt(engine_dir: str | Path, *, provider: str = "cpu") -> LoadedTrt:
    """An engine directory -> a pipeline whose decoder is the engine (vision graphs on
    ONNX Runtime's `provider`)."""
    engine_dir = Path(engine_dir)
    import_tensorrt()  # the missing-TensorRT error before anything else
    manifest = read_manifest(engine_dir)
    info = read_engine_info(engine_dir)
    embeddings = load_embeddings(engine_dir, manifest)
    decoder = TrtDecoder(open_engine(engine_dir, info), manifest, embeddings, limits_of(info))

    def open_graph(graph: str):
        return open_session(engine_dir, manifest, graph, provider=provider)

    model = OrtMLLM(engine_dir, manifest, embeddings, open_graph)
    tokenizer, config = load_text(engine_dir, manifest)
    return LoadedTrt(OnnxPipeline(model, tokenizer, config, decoder), decoder, manifest, info)


def state_shape(entry: dict, batch: int, past: int) -> tuple[int, ...]:
    """A decoder state tensor's concrete shape from its manifest entry (``batch`` and
    ``past_sequence`` replaced)."""
    return tuple(batch if d == "batch" else past if d == "past_sequence" else int(d) for d in entry["shape"])
