"""OpenMP's wait policy for the command-line tools, chosen before torch loads OpenMP.

By default torch's OpenMP threads spin for a while after each parallel region, waiting for
the next. When the machine has more runnable threads than cores, a spinning thread holds a
core that its partner needs, and each of a decode step's ~100 small ops waits for a
descheduled partner (benchmarks/RESULTS.md, "CPU decode": 10-20x slower steps at 2 threads
on a loaded 2-core machine). Passive waiting, where idle threads sleep at once, removes
that. `hybrid-run` and `hybrid-serve` call `prefer_passive_wait` before importing torch;
an ``OMP_WAIT_POLICY`` already in the environment wins. No torch import here.
"""

from __future__ import annotations

import os
import sys


def prefer_passive_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless set already; False when torch is already
    loaded (OpenMP read its settings then, so it is too late)."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True
