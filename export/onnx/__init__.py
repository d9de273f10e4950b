"""ONNX export and ONNX Runtime runtime (``hybrid-export --onnx``, ``hybrid-run --onnx``).

An export directory holds::

    manifest.json            what a runtime needs: files and sizes, graph inputs/outputs with
                             dynamic axes, state layout, config, tokenizer, template, opset,
                             flavour, tolerances stated and measured
    decoder.onnx (+ .data)   embeddings + mask + state -> last logits + new state (prefill and decode)
    embed_tokens.npy         the token embedding matrix (ids -> embeddings is a row lookup)
    encoder.onnx, image_connector.onnx, video_connector.onnx (+ .data)   with vision only
    newline.npy, separator.npy                                          with vision only
    config.yaml, tokenizer files

See `exporter.export_onnx` and `runtime.load_onnx`.
"""

from .errors import ExportError, ManifestError, ParityError, RuntimeUnavailableError
from .exporter import DEFAULT_OPSETS, export_onnx, supported_opsets
from .runtime import LoadedOnnx, OrtDecoder, OrtMLLM, load_onnx

__all__ = ["DEFAULT_OPSETS", "ExportError", "LoadedOnnx", "ManifestError", "OrtDecoder", "OrtMLLM", "ParityError",
           "RuntimeUnavailableError", "export_onnx", "load_onnx", "supported_opsets"]
