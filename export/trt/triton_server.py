"""A Triton Inference Server model repository for the decoder engine (plain Python).

    REPO/<model>/config.pbtxt     platform "tensorrt_plan", inputs and outputs from the manifest
    REPO/<model>/1/model.plan     the engine
    REPO/<model>/README.md        how to call it, and what it needs from the server

The model is stateless on the server: the client sends every ``past.*`` state tensor and
receives every ``present.*`` one, exactly as with the engine in Python (`runtime`).
``max_batch_size: 0`` because the batch is an explicit dimension of every tensor (-1 in
``dims``, like every dynamic axis). Plugins: an engine built with the AOT plugins (the
default) carries their kernels, so the TensorRT backend needs no plugin library; an engine
built with ``plugin_impl="jit"`` calls back into Python and cannot be served, so it is refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hybrid_mllm.core.atomic import write_directory
from hybrid_mllm.core.errors import HybridError

DEFAULT_MODEL = "hybrid_decoder"
TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "bool": "TYPE_BOOL",
         "int32": "TYPE_INT32", "int64": "TYPE_INT64"}


def _tensor(entry: dict) -> str:
    if entry["dtype"] not in TYPES:
        raise HybridError(f"graph tensor {entry['name']!r} has dtype {entry['dtype']}, which this writer does not map "
                          f"(known: {', '.join(TYPES)})")
    dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in entry["shape"])
    return f'  {{\n    name: "{entry["name"]}"\n    data_type: {TYPES[entry["dtype"]]}\n    dims: [ {dims} ]\n  }}'


def model_config(manifest: dict, *, model_name: str = DEFAULT_MODEL, instances: int = 1) -> str:
    """config.pbtxt text for the decoder graph described by `manifest`."""
    graph = manifest["graphs"]["decoder"]
    return "\n".join([
        f'name: "{model_name}"',
        'platform: "tensorrt_plan"',
        "max_batch_size: 0",
        "input [\n" + ",\n".join(_tensor(e) for e in graph["inputs"]) + "\n]",
        "output [\n" + ",\n".join(_tensor(e) for e in graph["outputs"]) + "\n]",
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_GPU\n  }}\n]",
        "",
    ])


def _readme(manifest: dict, info: dict | None, model_name: str) -> str:
    platform = (info or {}).get("platform", {})
    built = (f"{platform.get('gpu')} (compute capability {'.'.join(map(str, platform.get('compute_capability', [])))})"
             f" with TensorRT {platform.get('tensorrt')}") if platform else "an unrecorded GPU and TensorRT version"
    return f"""# {model_name}: hybrid-mllm decoder engine

Built for {built}: the Triton server must run the same TensorRT version on the same GPU model.

Plugins: the engine uses `hybrid::SelectiveScan` and `hybrid::CausalConv1d` as TensorRT AOT
Python plugins, whose compiled kernels are stored in `1/model.plan`; no plugin library
(`--backend-config=tensorrt,plugins=...` or `LD_PRELOAD`) is needed.

State: stateless on the server. Send `inputs_embeds` (batch, sequence, d_model) float32, `mask`
(batch, sequence) bool and every `past.*` tensor (zeros with 0 cached positions for a new
sequence); keep every `present.*` output and send it back as `past.*` on the next call.
Embed tokens with `embed_tokens.npy` of the export directory (a row lookup).
{len(manifest['state'])} state tensors; logits are for the last position only.
"""


def check_model_repository(repo_dir: str | Path, *, plugin_impl: str | None, model_name: str = DEFAULT_MODEL,
                           force: bool = False) -> Path:
    """REPO/<model_name>, after refusing an engine Triton cannot serve and a model directory
    that exists without `force` (called before an export writes anything)."""
    if plugin_impl == "jit":
        raise HybridError("this engine uses the Python (jit) plugins, which Triton Inference Server cannot run: "
                          "rebuild it with the default AOT plugins")
    model_dir = Path(repo_dir) / model_name
    if model_dir.exists() and not force:
        raise HybridError(f"{model_dir} already exists: choose another --triton-repo or pass --force to replace it")
    return model_dir


def write_model_repository(repo_dir: str | Path, manifest: dict, plan: str | Path, *, info: dict | None = None,
                           model_name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Write REPO/<model_name>/ (config.pbtxt, 1/model.plan, README.md) atomically; returns its path."""
    model_dir = check_model_repository(repo_dir, plugin_impl=(info or {}).get("options", {}).get("plugin_impl"),
                                       model_name=model_name, force=force)
    config = model_config(manifest, model_name=model_name)

    def fill(tmp: Path) -> None:
        (tmp / "config.pbtxt").write_text(config)
        (tmp / "1").mkdir()
        shutil.copyfile(plan, tmp / "1" / "model.plan")
        (tmp / "README.md").write_text(_readme(manifest, info, model_name))

    return write_directory(model_dir, fill, overwrite=True)
