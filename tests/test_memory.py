"""The prefill memory estimate against measured peaks, and the refusal it drives."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from hybrid_mllm.core.build import build_mllm
from hybrid_mllm.core.config import load_config
from hybrid_mllm.core.errors import ResourceError
from hybrid_mllm.core.mixer import StateSpec
from hybrid_mllm.core.presets import resolve_config_path
from hybrid_mllm.runtime import memory
from hybrid_mllm.runtime.memory import GiB, check_prefill_memory, estimate_prefill

CASES = ["1,4096,4096", "1,8192,1024", "2,2048,512"]  # batch, length, chunk


@pytest.fixture(scope="module")
def lm():
    return build_mllm(load_config(resolve_config_path("hybrid-tiny")), seed=0)[0].lm


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_estimate_is_within_2x_of_the_measured_peak(lm):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "_memory_probe.py"), "hybrid-tiny",
                          *CASES], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ratios = {}
    for row in map(json.loads, out.stdout.splitlines()):
        estimate = estimate_prefill(lm, row["batch"], row["length"], row["chunk"]).total
        ratios[row["batch"], row["length"], row["chunk"]] = round(estimate / row["peak"], 2)
    print("estimate / measured peak:", ratios)
    assert len(ratios) == len(CASES) and all(0.5 <= r <= 2.0 for r in ratios.values()), ratios


def test_the_estimate_grows_as_documented(lm):
    one, two = estimate_prefill(lm, 1, 8192, 1024), estimate_prefill(lm, 2, 8192, 1024)
    assert two.total == 2 * one.total  # every part is per sample
    assert estimate_prefill(lm, 1, 8192, 512).mask == one.mask // 2  # the mask scales with the chunk
    assert estimate_prefill(lm, 1, 100, 4096).mask == 100 * 100 * 5  # a chunk is never longer than the prompt


def test_refusal_names_the_sizes_and_a_chunk_that_fits(lm):
    need = estimate_prefill(lm, 1, 16384, 8192).total
    fits = estimate_prefill(lm, 1, 16384, 2048).total
    check_prefill_memory(lm, 1, 16384, 8192, available=need)  # enough: no error
    with pytest.raises(ResourceError) as info:
        check_prefill_memory(lm, 1, 16384, 8192, available=fits)
    message = str(info.value)
    assert message.startswith(f"prefilling 1 x 16,384 tokens needs about {need / GiB:.2f} GiB (state ")
    assert message.endswith(f"but {fits / GiB:.2f} GiB is free: use --prefill-chunk 2048")
    with pytest.raises(ResourceError, match="even 1-token chunks would not fit: use fewer tiles"):
        check_prefill_memory(lm, 1, 16384, 8192, available=1000)


class _Stateless(nn.Module):
    """A parameterless mixer (a third party's fixed mixing) with one fixed-size state."""

    state_specs = (StateSpec("last"),)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return (torch.zeros(batch_size, 8, device=device, dtype=dtype),)


def test_parameterless_mixer_uses_the_model_dtype():
    lm = build_mllm(load_config(resolve_config_path("hybrid-tiny")), seed=0)[0].lm
    before = estimate_prefill(lm, 1, 64, 64)
    fixed = memory._state_bytes(lm.blocks[0].mixer, 1, torch.float32)[1]
    lm.blocks[0].mixer = _Stateless()
    assert estimate_prefill(lm, 1, 64, 64).state == before.state - fixed + 8 * 4  # float32: 4 bytes


def test_cuda_free_memory_counts_the_allocator_cache(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 5 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 * GiB)
    assert memory.available_bytes("cuda") == 6 * GiB  # 3 free on the GPU + 3 cached unused


def test_cgroup_over_its_limit_has_nothing_free(tmp_path):
    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("1500\n")  # the limit was lowered under the usage
    assert memory._cgroup_free(tmp_path) == 0
    (tmp_path / "memory.current").write_text("400\n")
    assert memory._cgroup_free(tmp_path) == 600


def test_cache_growth_counts_the_query_groups_of_an_attention_inside_a_parallel_mixer():
    """A `parallel` mixer holds its attention as a part: the KV cache's repeat for GQA still counts."""
    from hybrid_mllm.plugins.mixers.attention import Attention
    from hybrid_mllm.plugins.mixers.parallel import Parallel

    attention = Attention(64, n_head=8, n_kv_head=2)
    parallel = Parallel(64, parts={"attention": {"n_head": 8, "n_kv_head": 2}, "mamba": {"d_state": 4}})
    assert memory._query_groups(attention) == memory._query_groups(parallel) == 4.0
    assert memory._query_groups(parallel.parts["mamba"]) == 1.0
