"""RetNet-style retention mixer, shipped as a hybrid-mllm plugin."""

from .retention import Retention

__all__ = ["Retention"]
