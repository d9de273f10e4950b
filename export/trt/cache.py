"""Engine identity: cache keys and the cache's files (plain Python).

A TensorRT engine is only valid for the GPU model (compute capability) and TensorRT
version it was built with, so the key hashes those with the graph. It also hashes the
build options (precision, profile limits, plugin implementation): two engines of one graph
built for fp16 and fp32 must not share a cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from hybrid_mllm.core.atomic import write_atomic
from hybrid_mllm.runtime.trt.platform import Platform

CACHE_ENV = "HYBRID_MLLM_TRT_CACHE"
CHUNK = 1 << 20


def graph_digest(files: Iterable[Path]) -> str:
    """sha256 over the graph file and its external data, in the given order (names excluded:
    a renamed copy is the same graph)."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        h.update(b"\0file\0")
    return h.hexdigest()


def cache_key(graph_sha256: str, platform: Platform, options: dict) -> str:
    """sha256 of the graph digest, TensorRT version, GPU name and compute capability, and the
    build options (JSON, sorted keys)."""
    payload = json.dumps({"graph": graph_sha256, "platform": asdict(platform), "options": options}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def default_cache_dir() -> Path:
    """$HYBRID_MLLM_TRT_CACHE, else ~/.cache/hybrid-mllm/trt."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hybrid-mllm" / "trt")


def store(cache_dir: Path, key: str, plan: bytes) -> Path:
    """Write `plan` to cache_dir/KEY.plan atomically: concurrent builds of one key never mix
    their bytes; the last rename wins (the same engine)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    return write_atomic(cache_dir / f"{key}.plan", plan)
