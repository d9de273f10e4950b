"""TensorRT: decoder engines built from the custom-flavour export, their parity gate, Triton server repos.

``hybrid-export --trt CHECKPOINT OUT_DIR`` writes an engine directory (`exporter.export_trt`);
``hybrid-run --trt OUT_DIR`` runs it (`hybrid_mllm.runtime.trt`). Modules, one job each:

    errors.py         the build's errors
    cache.py          engine cache keys and files (no TensorRT)
    build.py          ONNX -> engine (custom nodes marked for their plugins), cached
    parity.py         the engine's parity gate (the ONNX gate's chains, clamped to the profiles)
    triton_server.py  the Triton Inference Server model repository (no TensorRT)
    exporter.py       checkpoint -> engine directory, with the parity gate

The plugins themselves belong to the components that declare the custom nodes (Mamba's:
`hybrid_mllm.plugins.mixers.ops_trt`). Nothing here imports TensorRT at module import.
"""
