"""TensorRT: plugins for the custom nodes, decoder engines, their runtime, Triton Inference Server repos.

``hybrid-export --trt CHECKPOINT OUT_DIR`` writes an engine directory (`exporter.export_trt`);
``hybrid-run --trt OUT_DIR`` generates with it (`runtime.load_trt`). Modules, one job each:

    errors.py         the errors, and the lazy ``import tensorrt`` with its install hint
    shapes.py         shape and type rules of hybrid::SelectiveScan / CausalConv1d (no TensorRT)
    kernels.py        our Triton kernels in TensorRT's calling convention: JIT launch, AOT PTX
    plugins.py        the ``tensorrt.plugin`` registrations (shape, autotune, aot_impl, impl)
    profiles.py       the prefill and decode optimization profiles (no TensorRT)
    cache.py          engine cache keys, refusing engines built elsewhere (no TensorRT)
    build.py          ONNX -> engine, cached
    runtime.py        TrtEngine, TrtDecoder (the Decoder protocol), load_trt
    triton_server.py  the Triton Inference Server model repository (no TensorRT)
    exporter.py       checkpoint -> engine directory, with the parity gate

Nothing here imports TensorRT at module import.
"""
