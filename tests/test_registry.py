"""Registry: names, duplicates naming both packages, did-you-mean, listing."""

import types

import pytest
import torch
from torch import nn

from hybrid_mllm.core import ConfigError, RegistryError, hookimpl
from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import parse_config
from hybrid_mllm.core.registry import Registry
from hybrid_mllm.plugins.mixers.mamba import Mamba


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
    assert Registry.load(autoload=False).names("mixer", "mam*") == ["mamba", "mamba2"]


class GeGLU(nn.Module):
    """A third party's FFN: gelu(gate(x)) * up(x) -> down, no aux loss."""

    def __init__(self, d_model: int, *, d_hidden: int = 32, device=None, dtype=None):
        super().__init__()
        self.gate, self.up = nn.Linear(d_model, d_hidden), nn.Linear(d_model, d_hidden)
        self.down = nn.Linear(d_hidden, d_model)

    def forward(self, x):
        return self.down(nn.functional.gelu(self.gate(x)) * self.up(x)), x.new_zeros(())


def test_a_plugin_adds_an_ffn_kind_used_from_yaml():
    module = types.ModuleType("ffn_pkg")

    @hookimpl
    def register_ffns(register):
        register("geglu", GeGLU)

    module.register_ffns = register_ffns
    reg = Registry.load(autoload=False, extra_plugins=(module,))
    assert reg.names("ffn") == ["geglu", "mlp", "moe", "relu2_mlp", "shared_moe"] and reg.entry("ffn", "geglu").package == "ffn_pkg"
    raw = {"model": {"vocab_size": 16, "d_model": 8, "n_layer": 2, "layers": ["mamba", "mamba"],
                     "ffn_layers": ["geglu", "none"], "geglu": {"d_hidden": 12}}}
    config = parse_config(raw, registry=reg)
    assert config.model.ffns == {"geglu": {"d_hidden": 12}} and config.model.to_dict()["geglu"] == {"d_hidden": 12}
    model = build_model(config, registry=reg)
    assert isinstance(model.blocks[0].ffn, GeGLU) and model.blocks[1].ffn is None
    assert model(torch.randint(0, 16, (1, 5))).logits.shape == (1, 5, 16)
    with pytest.raises(ConfigError, match=r"model.geglu.d_hiden: unknown option. Did you mean 'd_hidden'"):
        parse_config({**raw, "model": {**raw["model"], "geglu": {"d_hiden": 12}}}, registry=reg)
    with pytest.raises(ConfigError, match=r"model.ffn_layers\[0\]: unknown ffn 'geglu'"):
        parse_config(raw)  # without the plugin


def test_export_declarations_are_found_by_class_and_base_class():
    reg = Registry.load(autoload=False)

    class MyMamba(Mamba):
        pass

    declared = reg.export_of(Mamba(8, device="meta"))
    assert declared is not None and reg.export_of(MyMamba(8, device="meta")) is declared
    assert reg.export_of(nn.Identity()) is None
