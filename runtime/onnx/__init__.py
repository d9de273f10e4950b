"""Run an export directory (``hybrid-export --onnx``) with ONNX Runtime behind the PyTorch API.

An export directory holds::

    manifest.json            what a runtime needs: files and sizes, graph inputs/outputs with
                             dynamic axes, state layout, config, tokenizer, template, opset,
                             flavour, custom nodes, tolerances stated and measured
    decoder.onnx (+ .data)   embeddings + mask + state -> last logits + new state (prefill and decode)
    embed_tokens.npy         the token embedding matrix (ids -> embeddings is a row lookup)
    encoder.onnx, image_connector.onnx, video_connector.onnx (+ .data)   with vision only
    newline.npy, separator.npy                                          with vision only
    config.yaml, tokenizer files

Modules: `manifest` (the format, read and written), `sessions` (providers, custom nodes on the
CPU), `decoder` (`OrtDecoder`: the `Decoder` protocol), `model` (`OrtMLLM`: embeddings and
vision graphs for the shared splice), `load` (`load_onnx`).
"""

from ..errors import ManifestError, RuntimeUnavailableError
from .decoder import DEFAULT_PREFILL_CHUNK, OrtDecoder
from .load import LoadedOnnx, OnnxPipeline, load_onnx
from .model import OrtMLLM

__all__ = ["DEFAULT_PREFILL_CHUNK", "LoadedOnnx", "ManifestError", "OnnxPipeline", "OrtDecoder", "OrtMLLM",
           "RuntimeUnavailableError", "load_onnx"]
