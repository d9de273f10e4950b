"""Console entry of ``hybrid-serve``: OpenMP's wait policy first (`core.openmp`), then the CLI."""

from __future__ import annotations

from hybrid_mllm.core.openmp import prefer_passive_wait


def serve() -> None:
    prefer_passive_wait()
    from .cli import entry  # imports torch: after the policy is set

    entry()
