"""The component registry: every encoder, mixer, connector, FFN, scan and SSD kernel by name, and
every component's export declaration by its class.

Built-in plugins and third-party plugins register through the same hooks
(`hybrid_mllm.core.hookspecs`). Third-party plugins are found through the
``hybrid_mllm`` entry-point group unless ``HYBRID_MLLM_DISABLE_PLUGIN_AUTOLOAD`` is set.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import pluggy

from . import hookspecs
from .errors import RegistryError
from .suggest import unknown

AUTOLOAD_ENV = "HYBRID_MLLM_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PACKAGE = "hybrid-mllm"
# Reached by module name so that core does not import the plugins it hosts.
BUILTIN_PLUGINS = (
    "hybrid_mllm.core.ffn",
    "hybrid_mllm.plugins.encoders",
    "hybrid_mllm.plugins.mixers",
    "hybrid_mllm.plugins.connectors",
    "hybrid_mllm.plugins.ffns",
)
# kind -> hook name
KINDS = {
    "encoder": "register_encoders",
    "mixer": "register_mixers",
    "connector": "register_connectors",
    "scan_kernel": "register_scan_kernels",
    "ssd_kernel": "register_ssd_kernels",
    "linear_kernel": "register_linear_kernels",
    "block_step": "register_block_steps",
    "ffn": "register_ffns",
    "export": "register_exports",  # keyed by the component's class (`class_name`)
}


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    obj: Any
    package: str


class Registry:
    """Names -> components, per kind. Build one with `Registry.load()` or `get_registry()`."""

    def __init__(self, plugin_manager: pluggy.PluginManager, packages: dict[int, str]):
        self.plugin_manager = plugin_manager
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KINDS.items():
            for impl in getattr(plugin_manager.hook, hook_name).get_hookimpls():
                package = packages.get(id(impl.plugin), impl.plugin_name)
                self._call_hook(impl, hook_name, package, self._registrar(kind, package))

    @classmethod
    def load(cls, *, autoload: bool | None = None, extra_plugins: tuple = ()) -> Registry:
        """Register the built-ins, then entry-point plugins (unless autoload is off),
        then `extra_plugins` (modules or objects with hook implementations)."""
        if autoload is None:
            autoload = not os.environ.get(AUTOLOAD_ENV)
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        packages: dict[int, str] = {}
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            pm.register(module, name=module_name)
            packages[id(module)] = BUILTIN_PACKAGE
        if autoload:
            _load_entry_points(pm, packages)
        for plugin in extra_plugins:
            pm.register(plugin)
            packages.setdefault(id(plugin), getattr(plugin, "__name__", repr(plugin)))
        return cls(pm, packages)

    @staticmethod
    def _call_hook(impl, hook_name: str, package: str, register) -> None:
        try:
            impl.function(register=register)
        except RegistryError:
            raise
        except Exception as e:
            if package == BUILTIN_PACKAGE:  # our own bug: keep the traceback
                raise
            raise RegistryError(f"plugin {package}: {hook_name} raised {type(e).__name__}: {e}. Fix or uninstall "
                                f"{package}, or set {AUTOLOAD_ENV}=1 to skip plugins") from None

    def _registrar(self, kind: str, package: str):
        def register(name: str | type, obj: Any) -> None:
            if kind == "export":
                name = class_name(name)
            taken = self._entries[kind].get(name)
            if taken is not None:
                raise RegistryError(
                    f"{kind} '{name}' is registered twice: by {taken.package} and by {package}. "
                    f"Uninstall one of them or rename the component in the plugin."
                )
            self._entries[kind][name] = Entry(kind, name, obj, package)

        return register

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Sorted names of one kind, optionally filtered by a glob (`'vit_*'`)."""
        self._check_kind(kind)
        return sorted(n for n in self._entries[kind] if fnmatch(n, pattern))

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [kind] if kind else list(KINDS)
        return [self._entries[k][n] for k in kinds for n in self.names(k)]

    def entry(self, kind: str, name: str) -> Entry:
        self._check_kind(kind)
        if name not in self._entries[kind]:
            raise RegistryError(unknown(kind.replace("_", " "), name, self._entries[kind]))
        return self._entries[kind][name]

    def get(self, kind: str, name: str) -> Any:
        """The component registered as `name`; an unknown name gets 'did you mean'."""
        return self.entry(kind, name).obj

    def export_of(self, module: object) -> Any | None:
        """The export declaration of `module`'s class or its nearest base class that has one."""
        for cls in type(module).__mro__:
            entry = self._entries["export"].get(class_name(cls))
            if entry is not None:
                return entry.obj
        return None

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._entries.get(kind, {})

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise RegistryError(unknown("component kind", kind, KINDS))


def class_name(cls: type) -> str:
    """The name a class's export declaration is registered under: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_entry_points(pm: pluggy.PluginManager, packages: dict[int, str]) -> None:
    """Register the plugins of the ``hybrid_mllm`` entry-point group (pluggy's
    `load_setuptools_entrypoints`, but a plugin that fails to import is named)."""
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != hookspecs.PROJECT or pm.get_plugin(ep.name) is not None:
                continue
            package = dist.metadata["name"]
            try:
                plugin = ep.load()
            except Exception as e:  # any error in third-party code: name the plugin, keep one line
                raise RegistryError(
                    f"plugin '{ep.name}' ({ep.value}) of package {package} fails to import: {type(e).__name__}: "
                    f"{e}. Fix or uninstall {package}, or set {AUTOLOAD_ENV}=1 to skip plugins") from None
            pm.register(plugin, name=ep.name)
            packages[id(plugin)] = package


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _default
    if _default is None:
        _default = Registry.load()
    return _default


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests; apps that add plugins by hand). None resets."""
    global _default
    _default = registry
