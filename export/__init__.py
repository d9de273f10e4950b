"""ONNX / TensorRT export and runtimes (see the export issue)."""
