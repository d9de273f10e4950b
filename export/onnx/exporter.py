"""Checkpoint -> export directory: graphs, embeddings, tokenizer, config, parity gate, manifest.

Everything is written to a temporary sibling directory and renamed into place only after
the parity gate passed, so a failed export leaves nothing behind (and `force` replaces an
existing directory only then).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from hybrid_mllm.core.atomic import write_directory
from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.config import save_config
from hybrid_mllm.core.exportable import FLAVOURS, custom_nodes
from hybrid_mllm.core.mllm import HybridMLLM
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.runtime.onnx.manifest import write_manifest

from . import functions, parity
from .decoder import export_decoder, state_layout
from .errors import ExportError
from .vision import export_vision

MIN_OPSET = 18  # the dynamo exporter's lowest
# standard: 23 has ONNX's Attention op, which ONNX Runtime runs ~30% faster than the
# MatMul/Where/Softmax decomposition of earlier opsets (jamba-small prefill, measured);
# custom: the graph is for TensorRT, whose ONNX parser lags the newest opsets.
DEFAULT_OPSETS = {"standard": 23, "custom": 20}
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def supported_opsets() -> range:
    """The opsets both the dynamo exporter and the installed onnx know."""
    from torch.onnx import _constants  # the exporter's own bound; no public name for it

    highest = min(getattr(_constants, "ONNX_MAX_OPSET", MIN_OPSET), onnx.defs.onnx_opset_version())
    return range(MIN_OPSET, highest + 1)


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, flavour: str = "standard",
                opset: int | None = None, dtype: str = "float32", force: bool = False, verbose: bool = False,
                log: Callable[[str], None] = lambda message: None) -> dict:
    """Export a checkpoint to `out_dir`; returns the manifest. `opset` None: the flavour's
    default (`DEFAULT_OPSETS`). Raises `ExportError` (or a subclass, `ParityError`) with a
    one-line reason, leaving `out_dir` untouched."""
    out_dir = Path(out_dir)
    if flavour not in FLAVOURS:
        raise ExportError(f"unknown scan flavour {flavour!r}: choose one of {', '.join(FLAVOURS)}")
    opset = DEFAULT_OPSETS[flavour] if opset is None else opset
    if opset not in supported_opsets():
        raise ExportError(f"opset {opset} is not supported: choose {MIN_OPSET} to {supported_opsets()[-1]} "
                          f"(what torch {torch.__version__}'s exporter and onnx {onnx.__version__} both support)")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if flavour == "custom" and dtype != "float32":
        raise ExportError("the custom flavour is checked with float32 reference ops: export it in float32 (TensorRT "
                          "builds float16 engines from it), or use --scan standard with --fp16")
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists: choose another directory or pass --force to replace it")
    log(f"loading {checkpoint}")
    model, tokenizer, config = load_checkpoint(checkpoint)  # CheckpointError for anything not ours
    model.eval()
    exported = model if dtype == "float32" else copy.deepcopy(model).to(DTYPES[dtype])
    manifest = {}

    def fill(tmp: Path) -> None:
        manifest.update(_write_all(model, exported, tokenizer, config, tmp, flavour=flavour, opset=opset,
                                   dtype=dtype, verbose=verbose, log=log))

    write_directory(out_dir, fill, overwrite=True)
    return manifest


def _write_all(model: HybridMLLM, exported: HybridMLLM, tokenizer, config, tmp: Path, *, flavour: str, opset: int,
               dtype: str, verbose: bool, log) -> dict:
    lm = exported.lm
    log(f"exporting the decoder ({flavour} flavour, opset {opset}, {dtype})")
    decoder = export_decoder(lm, tmp / "decoder.onnx", flavour=flavour, opset=opset, verbose=verbose)
    nodes = custom_nodes(e.obj for e in get_registry().entries("export"))
    if flavour == "standard":
        log("adding the standard-op definitions of the custom nodes")
        functions.attach_definitions(tmp / "decoder.onnx", nodes, opset, DTYPES[dtype])
    graphs = {"decoder": {"file": "decoder.onnx", **decoder}}
    np.save(tmp / "embed_tokens.npy", lm.embed.table().detach().numpy())
    vision = None
    if exported.has_vision:
        log("exporting the vision encoder and connectors")
        vision = export_vision(exported, tmp, opset=opset, verbose=verbose)
        graphs.update(vision.pop("graphs"))
        vision.update(_save_vision_embeddings(exported, tmp), grid_pos=exported.grid_pos)
    tokenizer.save(tmp)
    config = dataclasses.replace(config, text=dataclasses.replace(config.text, tokenizer=tokenizer.describe()))
    save_config(config, tmp / "config.yaml")

    log("parity gate: ONNX Runtime vs PyTorch")
    tol = parity.TOLERANCE[dtype]
    custom = flavour == "custom"
    layout = state_layout(lm)
    measured = {"decoder": parity.check_decoder(model.lm, parity.open_session(tmp / "decoder.onnx", custom_ops=custom),
                                                layout, tol=tol)}
    if vision is not None:
        names = ("encoder", "image_connector", "video_connector")
        sessions = {k: parity.open_session(tmp / f"{k}.onnx") for k in names}
        measured["vision"] = parity.check_vision(model, sessions, tol=tol)
    worst = max(v for part in measured.values() for v in part.values())
    log(f"parity gate passed: largest relative difference {worst:.1e} (tolerance {tol:.0e})")

    manifest = {
        "flavour": flavour, "opset": opset, "dtype": dtype,
        "custom_ops": _custom_ops(tmp / "decoder.onnx", nodes) if custom else None,
        "config": config.to_dict(), "config_file": "config.yaml", "template": config.text.template,
        "tokenizer": tokenizer.describe(),
        "graphs": graphs,
        "state": [e.to_dict() for e in layout],
        "embeddings": {"file": "embed_tokens.npy", "shape": list(lm.embed.weight.shape), "dtype": dtype},
        "vision": vision,
        "special_tokens": {"image": tokenizer.image_id, "video": tokenizer.video_id},
        "tolerances": {"stated": tol, "rule": "max |ort - torch| <= tol * max(1, max |torch|), float32 PyTorch",
                       "measured": measured},
        "versions": _versions(),
    }
    write_manifest(tmp, manifest)
    return manifest


def _custom_ops(path: Path, nodes: dict) -> dict:
    """The custom node types the decoder graph holds: ``{"domains": [...], "ops": ["domain::name", ...]}``."""
    model = onnx.load(str(path), load_external_data=False)
    held = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node} & set(nodes))
    return {"domains": sorted({op.split("::")[0] for op in held}), "ops": held}


def _save_vision_embeddings(model: HybridMLLM, out: Path) -> dict:
    """The learned row-end and frame-separator embeddings the splice inserts, as .npy files."""
    files = {}
    for key, param in (("newline", model.image_newline), ("separator", model.frame_separator)):
        if param is not None:
            np.save(out / f"{key}.npy", param.detach().numpy())
        files[f"{key}_file"] = f"{key}.npy" if param is not None else None
    return files


def _versions() -> dict:
    from importlib.metadata import version

    import onnxruntime
    import onnxscript
    return {"hybrid-mllm": version("hybrid-mllm"), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}
