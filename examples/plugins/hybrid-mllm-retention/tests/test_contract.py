"""The plugin runs the same contract checks as hybrid-mllm's built-in mixers, and exports."""

import pytest
from hybrid_mllm_retention import Retention

from hybrid_mllm.testing import MIXER_CHECKS, check_export


@pytest.mark.parametrize("check", MIXER_CHECKS, ids=lambda c: c.__name__)
def test_retention_contract(check):
    check(Retention, d_model=16, options={"n_head": 2})


@pytest.mark.parametrize("flavour", ["standard", "custom"])
def test_retention_exports(flavour):
    check_export(Retention, d_model=16, options={"n_head": 2}, flavour=flavour)  # needs the plugin installed
