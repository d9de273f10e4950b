"""hybrid_mllm.runtime: a prompt with images / videos -> an answer, on PyTorch, ONNX Runtime or TensorRT.

The path, shared by every backend::

    Request -> template (core.text) -> VisualLoader (files -> tiles / frames, token counts,
    context and visual-token limits) -> splice (encoder + connectors -> visual tokens in the
    text, left-padded batch) -> Decoder.prefill -> Decoder.step ... (generate)

Modules: `splice` (the one splice; `cue` its optional grid cue), `visual_inputs` and
`visual_budget` (loading and limits), `memory` (a prefill's memory, checked first),
`generate` (the `Decoder` protocol, PyTorch's `TorchDecoder`, sampling), `pipeline`
(`Pipeline`, `Request`), `onnx` (export directories in ONNX Runtime), `trt` (TensorRT
engines), `cli_run` (``hybrid-run``, which picks the backend), `cli_model` (``hybrid-model``).
"""
