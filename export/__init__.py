"""hybrid_mllm.export: checkpoints -> artefacts (ONNX graphs, TensorRT engines, Triton server repositories),
each checked against PyTorch before it is written (``hybrid-export``). Running them is `hybrid_mllm.runtime`."""
