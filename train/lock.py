"""One trainer per output directory: a lock file created exclusively, removed on exit."""

from __future__ import annotations

import os
from pathlib import Path

from hybrid_mllm.core.errors import HybridError

LOCK = ".train.lock"


class OutputLocked(HybridError):
    """Another training run is writing to the same output directory."""


class OutputLock:
    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = self.path.read_text().strip() or "?"
            if owner.isdigit() and not _alive(int(owner)):
                self.path.unlink(missing_ok=True)  # left by a run that was killed
                return self.__enter__()
            raise OutputLocked(f"{self.path.parent} is in use by another training run (pid {owner}); "
                               f"choose another train.output_dir, or delete {self.path} if that run is gone") from None
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
