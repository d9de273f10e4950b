"""A real third-party package (examples/plugins/hybrid-mllm-retention), installed with pip into
a temporary folder, is found through its entry point and used from YAML."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugins" / "hybrid-mllm-retention"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(PLUGIN)],
        check=True, capture_output=True, env={**os.environ, "TMPDIR": str(build)},
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYBRID_MLLM_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_entry_point_registers_the_mixer_with_its_package(plugin_env):
    r = _run("from hybrid_mllm.core.registry import get_registry as g; e = g().entry('mixer', 'retention');"
             "print(e.package, e.obj.__module__)", plugin_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["hybrid-mllm-retention", "hybrid_mllm_retention.retention"]


def test_model_from_yaml_uses_the_plugin(plugin_env):
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.runtime.cli_model", str(PLUGIN / "retention-tiny.yaml"),
                        "--seq-len", "40", "--new-tokens", "4"], env=plugin_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "retention" in r.stdout and "OK" in r.stdout


def test_autoload_can_be_turned_off(plugin_env):
    env = {**plugin_env, "HYBRID_MLLM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    r = _run("from hybrid_mllm.core.registry import get_registry as g; print(g().names('mixer'))", env)
    assert r.returncode == 0, r.stderr
    assert "retention" not in r.stdout and "mamba" in r.stdout
