"""Registry: names, duplicates naming both packages, did-you-mean, listing."""

import types

import pytest
from torch import nn

from hybrid_mllm.core import RegistryError, hookimpl
from hybrid_mllm.core.registry import Registry


def _plugin(name: str, mixer_name: str):
    module = types.ModuleType(name)

    @hookimpl
    def register_mixers(register):
        register(mixer_name, nn.Identity)

    module.register_mixers = register_mixers
    return module


def test_builtins_are_registered_through_the_hooks():
    reg = Registry.load(autoload=False)
    assert {"attention", "mamba"} <= set(reg.names("mixer"))
    assert {"ref", "chunked"} <= set(reg.names("scan_kernel"))
    assert reg.entry("mixer", "mamba").package == "hybrid-mllm"


def test_extra_plugin_is_added_with_its_package_name():
    reg = Registry.load(autoload=False, extra_plugins=(_plugin("my_pkg", "identity"),))
    assert reg.entry("mixer", "identity").package == "my_pkg"


def test_duplicate_name_names_both_packages():
    with pytest.raises(RegistryError, match=r"mixer 'mamba' is registered twice: by hybrid-mllm and by rogue_pkg"):
        Registry.load(autoload=False, extra_plugins=(_plugin("rogue_pkg", "mamba"),))


def test_unknown_name_suggests_and_lists():
    reg = Registry.load(autoload=False)
    with pytest.raises(RegistryError, match=r"unknown mixer 'mamab'\. Did you mean 'mamba'\? Available: attention, mamba"):
        reg.get("mixer", "mamab")


def test_unknown_kind():
    with pytest.raises(RegistryError, match="unknown component kind 'mixers'. Did you mean 'mixer'"):
        Registry.load(autoload=False).names("mixers")


def test_glob_listing():
    assert Registry.load(autoload=False).names("mixer", "mam*") == ["mamba"]
