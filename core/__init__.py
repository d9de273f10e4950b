"""hybrid_mllm.core: registry, config, model assembly, scan dispatch."""

from .errors import ConfigError, HybridError, KernelUnavailableError, RegistryError
from .hookspecs import hookimpl
from .registry import Registry, get_registry

__all__ = ["ConfigError", "HybridError", "KernelUnavailableError", "RegistryError", "Registry",
           "get_registry", "hookimpl"]
