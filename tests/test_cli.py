"""The core commands: real runs, and user errors without tracebacks."""

import subprocess
import sys

import pytest

from hybrid_mllm.core import cli_plugins
from hybrid_mllm.core.cli import run_cli
from hybrid_mllm.runtime import cli_model


def test_hybrid_model_runs_a_preset_and_checks_decoding(capsys, tmp_path):
    assert run_cli(cli_model.main, ["hybrid-tiny", "--seq-len", "64", "--new-tokens", "4",
                                    "--save-config", str(tmp_path / "r.yaml")]) == 0
    out = capsys.readouterr().out
    assert "mamba" in out and "attention" in out and "OK" in out
    assert (tmp_path / "r.yaml").read_text().startswith("name: hybrid-tiny")


def test_hybrid_plugins_lists_components_and_packages(capsys):
    assert run_cli(cli_plugins.main, []) == 0
    out = capsys.readouterr().out
    for name in ("attention", "mamba", "chunked", "ref", "hybrid-mllm"):
        assert name in out


def test_hybrid_plugins_describes_linear_kernels_and_block_steps(capsys):
    assert run_cli(cli_plugins.main, ["--kind", "block_step"]) == 0
    out = capsys.readouterr().out
    assert "cpu_stack" in out and "stack: every block" in out and "mixer: pre-norm, in_proj" in out
    assert run_cli(cli_plugins.main, ["--kind", "linear_kernel"]) == 0
    assert "AVX512 or AVX2 float32 / bfloat16 dot products" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["no-such-preset"], "no shipped preset of that name"),
    (["hybrid-tiny", "--seq-len", "0"], "--seq-len and --batch must be >= 1"),
])
def test_user_errors_exit_2_without_traceback(args, message):
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.runtime.cli_model", *args], capture_output=True, text=True)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_bad_yaml_lists_problems_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {vocab_size: 8, d_model: 8, n_layer: 2, layers: [mamba, atention]}\n")
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.runtime.cli_model", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "model.layers[1]: unknown mixer 'atention'. Did you mean 'attention'?" in r.stderr


@pytest.mark.parametrize(("device", "message"), [("gpu", "not a device name"), ("cuda", "no CUDA GPU is visible")])
def test_bad_device_is_a_one_line_error(device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.runtime.cli_model", "hybrid-tiny", "--device", device],
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
