"""Checkpoint -> TensorRT engine directory: custom-flavour ONNX, engine, parity gate, optional Triton repo.

The directory is the ``custom`` ONNX export (manifest, graphs, embeddings, tokenizer,
config; `hybrid_mllm.export.onnx`) plus ``decoder.plan`` and ``engine.json``. TensorRT and
a GPU are checked first, so without them nothing is written; everything is written to a
temporary sibling and renamed into place only after the engine passed its parity gate
against PyTorch (`parity.parity_chains`: the ONNX gate's chains clamped to the engine's profiles).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hybrid_mllm.core.atomic import write_directory
from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.runtime.onnx.manifest import read_manifest
from hybrid_mllm.runtime.trt.engine import TrtDecoder, TrtEngine
from hybrid_mllm.runtime.trt.errors import import_tensorrt, require_cuda

from ..onnx import ExportError, ParityError, export_onnx, parity
from ..onnx.decoder import state_layout
from .build import BuildOptions, build_engine, write_engine
from .errors import TrtParityError
from .parity import TrtSession, parity_chains
from .triton_server import check_model_repository, write_model_repository

# Stated tolerances, relative to max(1, max |PyTorch float32|), per engine precision.
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "bf16": 6e-2}


def export_trt(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, options: BuildOptions,
               triton_repo: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
               force: bool = False, log: Callable[[str], None] = lambda message: None) -> dict:
    """Export, build, check; returns engine.json's content. Raises a `HybridError` subclass
    with a one-line reason, leaving `out_dir` (and `triton_repo`) untouched."""
    import_tensorrt()  # before anything is written: no TensorRT, no directory
    require_cuda()
    options.check()
    chains = parity_chains(parity.DECODER_CHAINS, options.limits)  # before the build: refuse limits that leave none
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists: choose another directory or pass --force to replace it")
    if triton_repo is not None:
        check_model_repository(triton_repo, plugin_impl=options.plugin_impl, force=force)
    result = {}

    def fill(tmp: Path) -> None:
        result.update(_export_build_check(checkpoint, tmp, options, chains, cache_dir, log))

    write_directory(out_dir, fill, overwrite=True)
    if triton_repo is not None:
        model_dir = write_model_repository(triton_repo, read_manifest(out_dir), out_dir / result["plan"], info=result,
                                           force=force)
        log(f"wrote the Triton Inference Server model {model_dir}")
    return result


def _export_build_check(checkpoint, tmp: Path, options: BuildOptions, chains: tuple, cache_dir, log) -> dict:
    manifest = export_onnx(checkpoint, tmp, flavour="custom", force=True, log=log)
    graph = manifest["graphs"]["decoder"]
    built = build_engine(tmp / graph["file"], graph["inputs"], options, cache_dir=cache_dir, log=log)
    log("parity gate: TensorRT vs PyTorch")
    lm = load_checkpoint(checkpoint).model.lm.eval()
    decoder = TrtDecoder(TrtEngine(built.plan), manifest, np.load(tmp / manifest["embeddings"]["file"]),
                         options.limits)
    tol = TOLERANCE[options.precision]
    try:
        measured = parity.check_decoder(lm, TrtSession(decoder), state_layout(lm), tol=tol, chains=chains)
    except ParityError as e:
        raise TrtParityError(str(e).replace("ONNX Runtime", "TensorRT")) from None
    log(f"parity gate passed: largest relative difference {max(measured.values()):.1e} (tolerance {tol:.0e})")
    return write_engine(tmp, built.plan, {**built.info, "tolerances": {"stated": tol, "measured": measured}})
