"""Built-in vision encoders, registered as a plugin."""

from __future__ import annotations

from hybrid_mllm.core.hookspecs import hookimpl

from .timm_vit import TimmViT
from .tiny import TinyConvEncoder


@hookimpl
def register_encoders(register):
    register("timm", TimmViT)
    register("tiny", TinyConvEncoder)
