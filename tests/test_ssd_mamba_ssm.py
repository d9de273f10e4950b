"""The ``mamba_ssm`` SSD kernel: its availability message everywhere, parity with ref on CUDA."""

import pytest
import torch

from hybrid_mllm.core.errors import KernelUnavailableError
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.ssd import resolve_kernel
from hybrid_mllm.plugins.mixers.ssd_mamba_ssm import INSTALL_HINT, mamba_ssm_available
from hybrid_mllm.testing import check_ssd_gradients, check_ssd_matches_ref

KERNEL = get_registry().get("ssd_kernel", "mamba_ssm")
ON_CUDA = torch.cuda.is_available() and mamba_ssm_available(torch.device("cuda")) is None


def test_cpu_tensors_get_the_reason_and_the_install_line():
    reason = mamba_ssm_available(torch.device("cpu"))
    assert "CUDA tensors only" in reason and INSTALL_HINT in reason
    with pytest.raises(KernelUnavailableError, match="'mamba_ssm' does not run on cpu"):
        resolve_kernel("mamba_ssm", "cpu")


def test_it_is_not_auto_on_cpu():
    assert "cpu" not in KERNEL.priority


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine: availability depends on the install")
def test_without_cuda_the_install_line_is_given():
    assert INSTALL_HINT in mamba_ssm_available(torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA and mamba-ssm")
@pytest.mark.parametrize("case", [(2, 100, 4, 16, 2, 16, True, True, 32), (1, 64, 8, 32, 1, 64, False, True, 64)],
                         ids=str)
def test_matches_ref_on_cuda(case):
    check_ssd_matches_ref(KERNEL.fn, case, device="cuda", tol=1e-3)
    check_ssd_gradients(KERNEL.fn, case, device="cuda", tol=1e-2)
