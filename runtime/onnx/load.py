"""`load_onnx`: an export directory (``hybrid-export --onnx``) -> model, decoder, tokenizer, config.

The manifest and every file it lists are checked first (`manifest.read_manifest`); each graph
opened must have the inputs and outputs the manifest describes. `LoadedOnnx.pipeline()` is a
`Pipeline` whose default decoder is the export's, so the PyTorch pipeline code runs unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from hybrid_mllm.core.config import Config, load_config
from hybrid_mllm.core.text import Tokenizer, load_tokenizer

from ..errors import ManifestError
from ..pipeline import Pipeline
from .decoder import DEFAULT_PREFILL_CHUNK, OrtDecoder
from .manifest import check_graph, manifest_file, read_manifest
from .model import OrtMLLM
from .sessions import make_session


class OnnxPipeline(Pipeline):
    """A `Pipeline` whose default decoder is an exported one (ONNX Runtime or TensorRT), not PyTorch's."""

    def __init__(self, model: OrtMLLM, tokenizer: Tokenizer, config: Config, decoder):
        super().__init__(model, tokenizer, config)
        self.decoder = decoder

    def answer(self, requests, generation, *, decoder=None, **kwargs):
        return super().answer(requests, generation, decoder=decoder or self.decoder, **kwargs)


class LoadedOnnx(NamedTuple):
    model: OrtMLLM
    decoder: OrtDecoder
    tokenizer: Tokenizer
    config: Config
    manifest: dict

    def pipeline(self) -> OnnxPipeline:
        return OnnxPipeline(self.model, self.tokenizer, self.config, self.decoder)


def load_onnx(out_dir: str | Path, *, provider: str = "cpu", prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
              threads: int | None = None) -> LoadedOnnx:
    """Check an export directory's manifest and files, and open its graphs on `provider`
    (`threads`: ONNX Runtime's intra-op threads; None: one per core)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    embeddings = load_embeddings(out_dir, manifest)

    def open_graph(graph: str):
        return open_session(out_dir, manifest, graph, provider=provider, threads=threads)

    decoder = OrtDecoder(open_graph("decoder"), manifest, embeddings, prefill_chunk=prefill_chunk)
    model = OrtMLLM(out_dir, manifest, embeddings, open_graph)
    return LoadedOnnx(model, decoder, *load_text(out_dir, manifest), manifest)


def load_embeddings(out_dir: Path, manifest: dict) -> np.ndarray:
    """The token embedding matrix (vocab, d), checked against the manifest's shape."""
    path = manifest_file(out_dir, manifest["embeddings"]["file"])
    embeddings = np.load(path)
    if list(embeddings.shape) != manifest["embeddings"]["shape"]:
        raise ManifestError(f"{path}: shape {list(embeddings.shape)}, the manifest says "
                            f"{manifest['embeddings']['shape']}; re-export")
    return embeddings


def load_text(out_dir: Path, manifest: dict) -> tuple[Tokenizer, Config]:
    """The export's tokenizer and config."""
    config = load_config(manifest_file(out_dir, manifest["config_file"]))
    return load_tokenizer(manifest["tokenizer"], base_dir=out_dir), config


def open_session(out_dir: Path, manifest: dict, graph: str, *, provider: str, threads: int | None = None):
    """An ONNX Runtime session for one of the export's graphs, checked against the manifest."""
    description = manifest["graphs"][graph]
    custom = graph == "decoder" and manifest["custom_ops"] is not None
    session = make_session(manifest_file(out_dir, description["file"]), provider=provider, custom_ops=custom,
                           threads=threads)
    check_graph(out_dir, description, session)
    return session
