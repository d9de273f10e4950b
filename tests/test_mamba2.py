"""The Mamba-2 mixer: the mixer contract with several option sets, and its parts."""

import math

import pytest
import torch

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config, parse_config, save_config
from hybrid_mllm.core.errors import RegistryError
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.plugins.mixers.mamba2 import GatedRMSNorm, Mamba2
from hybrid_mllm.testing import MIXER_CHECKS

OPTIONS = [
    {"d_state": 8, "headdim": 8, "chunk_size": 8},
    {"d_state": 4, "headdim": 4, "ngroups": 2, "d_conv": 2, "chunk_size": 5, "norm_before_gate": True},
    {"d_state": 4, "headdim": 8, "ngroups": 4, "expand": 4, "rmsnorm": False, "impl": "ref"},
    {"d_state": 6, "headdim": 16, "dt_limit": (0.01, 0.5), "bias": True, "conv_bias": False},
]


@pytest.mark.parametrize("check", MIXER_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_mixer_contract(options, check):
    check(Mamba2, d_model=16, options=options)


def test_registered():
    assert get_registry().get("mixer", "mamba2") is Mamba2


def test_parameter_names_and_shapes_follow_mamba_ssm():
    m = Mamba2(16, d_state=4, headdim=8, ngroups=2, expand=2)  # d_inner 32, nheads 4, conv_dim 48
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {
        "in_proj.weight": (2 * 32 + 2 * 2 * 4 + 4, 16), "conv_weight": (48, 4), "conv_bias": (48,),
        "dt_bias": (4,), "A_log": (4,), "D": (4,), "norm.weight": (32,), "out_proj.weight": (16, 32),
    }
    conv_state, ssm_state = m.init_state(3)
    assert conv_state.shape == (3, 48, 3) and ssm_state.shape == (3, 4, 8, 4) and ssm_state.dtype == torch.float32


def test_kernels_agree_inside_the_mixer():
    torch.manual_seed(0)
    m = Mamba2(16, d_state=8, headdim=4, ngroups=2, chunk_size=4)
    x = torch.randn(2, 11, 16)
    results = {}
    for impl in ("ref", "chunked"):
        m.impl = impl
        results[impl] = m(x)
    torch.testing.assert_close(results["chunked"][0], results["ref"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results["chunked"][1][1], results["ref"][1][1], atol=1e-5, rtol=1e-5)


def test_dt_limit_clamps_dt():
    """With dt_limit [0.2, 0.2] every head's dt is 0.2 whatever the input: the mixer's scan sees it."""
    seen = {}

    def scan(x, dt, A, B, C, D, state):
        seen["dt"] = dt
        return x, state

    m = Mamba2(16, d_state=4, headdim=8, dt_limit=(0.2, 0.2 + 1e-9))
    m.mix(torch.randn(1, 5, 16), None, None, conv=lambda x, w, b, s: (x, s), scan=scan)
    torch.testing.assert_close(seen["dt"], torch.full_like(seen["dt"], 0.2))


def _norm_by_hand(y, z, weight, group, before, eps=1e-5):
    def rms(v):
        g = v.unflatten(-1, (-1, group))
        return (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)
    gate = z * torch.sigmoid(z)
    return rms(y) * weight * gate if before else rms(y * gate) * weight


@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("group", [8, 4])
def test_gated_rmsnorm(group, before):
    norm = GatedRMSNorm(8, group_size=group, norm_before_gate=before)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 8))
    y, z = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(norm(y, z), _norm_by_hand(y, z, norm.weight.detach(), group, before))


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"headdim": 12}, ValueError, r"headdim 12 must divide d_inner = expand \* d_model = 32; use one of 32, 16, 8"),
    ({"headdim": 8, "ngroups": 3}, ValueError, "ngroups 3 must divide nheads = d_inner / headdim = 4; use one of 4, 2, 1"),
    ({"d_state": 0}, ValueError, "d_state must be >= 1, got 0"),
    ({"d_inner": 20}, ValueError, "headdim 8 must divide d_inner = 20; use one of 20, 10, 5, 4, 2, 1"),
    ({"d_inner": 0}, ValueError, "d_inner must be >= 1, got 0"),
    ({"dt_limit": (0.5, 0.5)}, ValueError, r"dt_limit must be \[low, high\] with 0 <= low < high, got \[0.5, 0.5\]"),
    ({"dt_limit": (0.1,)}, ValueError, "dt_limit must be"),
    ({"impl": "chunkd"}, RegistryError, "impl: unknown ssd kernel 'chunkd'. Did you mean 'chunked'?"),
])
def test_bad_options_name_the_field(options, error, message):
    with pytest.raises(error, match=message):
        Mamba2(16, **{"headdim": 8, **options})


def test_d_inner_sets_a_width_that_is_no_multiple_of_d_model():
    mixer = Mamba2(16, d_inner=24, headdim=8, d_state=4)
    assert (mixer.d_inner, mixer.nheads, mixer.conv_dim) == (24, 3, 32)
    assert mixer.in_proj.weight.shape == (24 + 32 + 3, 16) and mixer.out_proj.weight.shape == (16, 24)
    y, (conv_state, ssm_state) = mixer(torch.randn(2, 5, 16))
    assert y.shape == (2, 5, 16) and ssm_state.shape == (2, 3, 8, 4) and conv_state.shape == (2, 32, 3)


def test_a_model_yaml_with_mamba2_round_trips_and_runs(tmp_path):
    """A mamba2 block in a model YAML validates, saves (dt_limit's .inf included), loads the same,
    and the model it builds decodes token by token as it runs the whole sequence."""
    raw = {"model": {"vocab_size": 50, "d_model": 32, "n_layer": 2, "layers": ["mamba2", "attention"],
                     "mixers": {"mamba2": {"d_state": 8, "headdim": 16, "ngroups": 2, "chunk_size": 4},
                                "attention": {"n_head": 4}}}}
    config = parse_config(raw)
    assert config.model.mixers["mamba2"]["dt_limit"] == (0.0, math.inf)
    save_config(config, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again.model.mixers["mamba2"] == config.model.mixers["mamba2"]
    model = build_model(again, seed=0).eval()
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        full = model(ids).logits
        state, steps = None, []
        for t in range(9):
            out = model(ids[:, t:t + 1], state=state)
            state = out.state
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_matches_transformers_mamba2_mixer(ngroups):
    """Same weights, same outputs as transformers' Mamba2Mixer (its PyTorch path on CPU), parameters mapped 1:1."""
    modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    from transformers import Mamba2Config

    torch.manual_seed(0)
    config = Mamba2Config(hidden_size=32, state_size=8, expand=2, head_dim=16, n_groups=ngroups, num_heads=4,
                          conv_kernel=4, chunk_size=8, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
                          num_hidden_layers=1)
    hf = modeling.Mamba2Mixer(config, layer_idx=0).float().eval()
    ours = Mamba2(32, d_state=8, expand=2, headdim=16, ngroups=ngroups, d_conv=4, chunk_size=8, norm_eps=1e-5)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        hf.A_log.copy_(torch.log(torch.rand(4) * 5 + 1))
        weights = dict(hf.state_dict())
        weights["conv_weight"], weights["conv_bias"] = weights.pop("conv1d.weight")[:, 0], weights.pop("conv1d.bias")
        ours.load_state_dict(weights)
        x = torch.randn(2, 21, 32)
        expected = hf(x)
        y, _ = ours(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
