"""runtime.alloc: the malloc settings are applied, freed big blocks are reused, results unchanged.

The settings are process-wide, so each check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from hybrid_mllm.core.errors import ConfigError
from hybrid_mllm.runtime import alloc

GLIBC = alloc._libc() is not None

# Faults of four malloc / write / free rounds of a 48 MiB block (above glibc's 32 MiB mmap
# ceiling, so by default every round maps fresh pages), read with getrusage.
_ROUNDS = """
import ctypes, json, resource
from hybrid_mllm.runtime.alloc import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
n, faults = 48 * 2**20, []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n); libc.memset(p, 1, n); libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""

# A hybrid-tiny prefill in chunks: the last logits, to compare across settings.
_PREFILL = """
import json, torch
from hybrid_mllm.runtime.alloc import keep_freed_memory
applied = keep_freed_memory()
from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.presets import resolve_config_path
torch.set_num_threads(1)
config = load_config(resolve_config_path("hybrid-tiny"))
model = build_model(config, seed=0).eval()
ids = torch.randint(0, config.model.vocab_size, (2, 300), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    out = model.prefill(ids, chunk_size=128)
print(json.dumps({"applied": applied, "logits": out.logits[:, -1].tolist()}))
"""


def _run(code: str, mode: str) -> dict:
    env = {**os.environ, alloc.ENV: mode}
    env.pop("LD_PRELOAD", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the malloc settings are glibc's")
def test_keep_reuses_freed_big_blocks():
    pages = 48 * 2**20 // 4096
    system, keep = _run(_ROUNDS, "system"), _run(_ROUNDS, "keep")
    assert (system["applied"], keep["applied"]) == ("system", "keep")
    # glibc's default maps (and faults) every round afresh; kept, rounds 2-4 reuse the heap
    # (the comparison, not a page count, for the control: huge pages would fault fewer times)
    assert max(keep["faults"][1:]) < 0.05 * pages, keep["faults"]
    assert max(keep["faults"][1:]) * 10 < min(system["faults"][1:]), (system["faults"], keep["faults"])


@pytest.mark.skipif(not GLIBC, reason="the malloc settings are glibc's")
def test_prefill_results_identical_under_both_settings():
    system, keep = _run(_PREFILL, "system"), _run(_PREFILL, "keep")
    assert keep["applied"] == "keep"
    assert keep["logits"] == system["logits"]  # bit for bit: the allocator changes no arithmetic


def test_bad_mode_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(alloc.ENV, "jemalloc")
    with pytest.raises(ConfigError, match=r"HYBRID_MLLM_MALLOC: 'jemalloc' is not allowed \(allowed: keep, system;"):
        alloc.keep_freed_memory()


def test_not_glibc_is_reported_not_an_error(monkeypatch):
    monkeypatch.setenv(alloc.ENV, "keep")
    monkeypatch.setattr(alloc, "_applied", None)
    monkeypatch.setattr(alloc, "_libc", lambda: None)
    assert alloc.keep_freed_memory() == "unsupported"


def test_system_mode_sets_nothing(monkeypatch):
    monkeypatch.setenv(alloc.ENV, "system")
    monkeypatch.setattr(alloc, "_applied", None)
    monkeypatch.setattr(alloc, "_libc", lambda: pytest.fail("system mode must not touch malloc"))
    assert alloc.keep_freed_memory() == "system"


def test_pipeline_applies_the_setting(monkeypatch):
    from hybrid_mllm.core.build import build_mllm
    from hybrid_mllm.core.config import load_config
    from hybrid_mllm.core.presets import resolve_config_path
    from hybrid_mllm.runtime import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "keep_freed_memory", lambda: calls.append(1) or "keep")
    config = load_config(resolve_config_path("hybrid-tiny"))
    model, tokenizer = build_mllm(config, seed=0)
    pipeline.Pipeline(model.eval(), tokenizer, config)
    assert calls == [1]
