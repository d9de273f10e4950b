"""The plugin runs the same contract checks as hybrid-mllm's built-in mixers."""

import pytest

from hybrid_mllm.testing import MIXER_CHECKS
from hybrid_mllm_retention import Retention


@pytest.mark.parametrize("check", MIXER_CHECKS, ids=lambda c: c.__name__)
def test_retention_contract(check):
    check(Retention, d_model=16, options={"n_head": 2})
