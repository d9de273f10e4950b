"""``hybrid-train`` that stops dead inside its N-th checkpoint write, for tests/test_crash_safety.py.

    python _crash_driver.py MARKER WHERE N CONFIG [hybrid-train args...]

WHERE is ``state`` (config and weights written, the training state not yet) or ``rename``
(every file written and fsynced, the temporary directory not yet renamed into place). On
the N-th checkpoint the process creates MARKER and blocks, so the test can SIGKILL it at
exactly that point: no sleeps, no races, and no test hook in the library itself.
"""

import sys
import time
from pathlib import Path

import hybrid_mllm.core.atomic as atomic
import hybrid_mllm.train.loop as loop
from hybrid_mllm.train.cli_train import entry


def pause_on_call(module, name: str, marker: Path, nth: int) -> None:
    original, calls = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            marker.touch()
            while True:
                time.sleep(60)
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


if __name__ == "__main__":
    marker, where, nth = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    module, name = {"state": (loop, "save_state"), "rename": (atomic, "_replace_dir")}[where]
    pause_on_call(module, name, marker, nth)
    sys.argv = ["hybrid-train", *sys.argv[4:]]
    entry()
