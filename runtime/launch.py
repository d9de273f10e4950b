"""Console entry of ``hybrid-run``: OpenMP's wait policy first (`core.openmp`), then the CLI."""

from __future__ import annotations

from hybrid_mllm.core.openmp import prefer_passive_wait


def run() -> None:
    prefer_passive_wait()
    from .cli_run import entry  # imports torch: after the policy is set

    entry()
