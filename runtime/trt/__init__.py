"""TensorRT engines (``hybrid-export --trt`` directories) behind the `Decoder` protocol.

    errors.py    the errors, and the lazy ``import tensorrt`` with its install hint
    platform.py  the GPU and TensorRT an engine was built for, checked before it is loaded
    profiles.py  the prefill and decode optimization profiles, and which one a call uses
    plugins.py   the TensorRT plugins of the components' custom nodes (their export declarations)
    engine.py    TrtEngine, TrtDecoder, load_trt

Nothing here imports TensorRT at module import.
"""
