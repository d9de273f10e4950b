"""Contract tests for mixers, encoders, connectors, scan and SSD kernels, and the export check:
the checks built-ins pass, for plugin authors.

In a third-party plugin's test suite::

    import pytest
    from hybrid_mllm.testing import MIXER_CHECKS, check_export

    @pytest.mark.parametrize("check", MIXER_CHECKS, ids=lambda c: c.__name__)
    def test_my_mixer(check):
        check(MyMixer, d_model=32, options={"n_head": 4})

    @pytest.mark.parametrize("flavour", ["standard", "custom"])
    def test_my_mixer_exports(flavour):
        check_export(MyMixer, d_model=32, options={"n_head": 4}, flavour=flavour)

Each check raises AssertionError with the measured difference when the contract is broken.
"""

from .export_contract import check_export
from .mixer_contract import (
    MIXER_CHECKS,
    check_causality,
    check_chunked_equals_full,
    check_gradients,
    check_padding,
    check_shapes,
    check_step_equals_full,
)
from .scan_contract import (
    SCAN_CASES,
    SCAN_EDGE_CHECKS,
    check_scan_gradients,
    check_scan_matches_ref,
)
from .ssd_contract import (
    SSD_CASES,
    SSD_EDGE_CHECKS,
    check_ssd_gradients,
    check_ssd_matches_ref,
    check_ssd_nan,
)
from .vision_contract import CONNECTOR_CHECKS, ENCODER_CHECKS

__all__ = [
    "CONNECTOR_CHECKS", "ENCODER_CHECKS", "MIXER_CHECKS", "SCAN_CASES", "SCAN_EDGE_CHECKS", "SSD_CASES", "SSD_EDGE_CHECKS",
    "check_causality", "check_chunked_equals_full", "check_export", "check_gradients", "check_padding",
    "check_scan_gradients", "check_scan_matches_ref", "check_shapes", "check_ssd_gradients", "check_ssd_matches_ref", "check_ssd_nan",
    "check_step_equals_full",
]
