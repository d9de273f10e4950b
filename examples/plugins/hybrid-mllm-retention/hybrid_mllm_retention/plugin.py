"""The entry-point module: hook implementations only."""

from hybrid_mllm.core import hookimpl

from .export import RETENTION_EXPORT
from .retention import Retention


@hookimpl
def register_mixers(register):
    register("retention", Retention)


@hookimpl
def register_exports(register):
    register(Retention, RETENTION_EXPORT)
