"""The entry-point module: hook implementations only."""

from hybrid_mllm.core import hookimpl

from .retention import Retention


@hookimpl
def register_mixers(register):
    register("retention", Retention)
