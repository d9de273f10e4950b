"""FFN kinds of the Mamba-2 hybrids, registered as a plugin: Nemotron-H's squared-ReLU MLP
(``relu2_mlp``) and Granite-4.0-H's routed experts with a shared expert (``shared_moe``)."""

from __future__ import annotations

from hybrid_mllm.core.hookspecs import hookimpl

from .relu2 import Relu2MLP
from .shared_moe import SharedMoE


@hookimpl
def register_ffns(register):
    register("relu2_mlp", Relu2MLP)
    register("shared_moe", SharedMoE)
