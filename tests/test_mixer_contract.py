"""Every registered mixer passes the contract in hybrid_mllm.testing."""

import pytest

from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.testing import MIXER_CHECKS

# small options per built-in mixer; a mixer not listed is built with its defaults
OPTIONS = {
    "attention": [{"n_head": 4, "n_kv_head": 2}, {"n_head": 4, "rope": True},
                  {"n_head": 2, "n_kv_head": 1, "head_dim": 12, "rope": True, "rotary_dim": 6}],
    "mamba": [{"d_state": 8, "expand": 2}, {"d_state": 4, "inner_norms": True, "d_conv": 2}],
    "mamba2": [{"d_state": 8, "headdim": 8, "chunk_size": 8},
               {"d_state": 4, "headdim": 8, "d_inner": 24, "ngroups": 3, "chunk_size": 8, "rmsnorm": True,
                "norm_before_gate": True}],
    "parallel": [{"parts": {"mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8},
                            "attention": {"n_head": 2, "n_kv_head": 1, "head_dim": 12, "rope": True}}}],
}
CASES = [(name, opts) for name in get_registry().names("mixer") for opts in OPTIONS.get(name, [{}])]


@pytest.mark.parametrize("check", MIXER_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("name", "options"), CASES, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_mixer_contract(name, options, check):
    check(get_registry().get("mixer", name), d_model=16, options=options)
