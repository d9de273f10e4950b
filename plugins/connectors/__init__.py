"""Built-in connectors (vision features -> language-model embeddings), registered as a plugin."""

from __future__ import annotations

from hybrid_mllm.core.hookspecs import hookimpl

from .linear import Linear
from .mlp import MLP2xGELU
from .pool import Conv, Pool


@hookimpl
def register_connectors(register):
    register("linear", Linear)
    register("mlp2x_gelu", MLP2xGELU)
    register("pool", Pool)
    register("conv", Conv)
