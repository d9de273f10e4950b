"""One trainer per output directory: an exclusive `flock` on ``OUTPUT_DIR/.train.lock``.

Semantics: the lock belongs to the open file, not to the file's existence, so the kernel
drops it when the holder exits in any way, SIGKILL included. A lock file left behind by a
killed run therefore never blocks the next one; no pid check is needed (pids are reused,
and mean nothing on another host). A second trainer on the same directory fails at once
with `OutputLocked`, naming the holder's pid (written into the file for that message).
On a clean exit the file is removed. POSIX only (`fcntl`); on NFS, Linux maps `flock` to
byte-range locks, which work across clients.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hybrid_mllm.core.errors import HybridError

LOCK = ".train.lock"


class OutputLocked(HybridError):
    """Another training run is writing to the same output directory."""


class OutputLock:
    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputLocked(f"{self.path.parent} is in use by another training run (pid {owner}): wait for it "
                                   f"to finish, or choose another train.output_dir") from None
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # the previous holder removed the file between our open and our lock: retry
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc) -> None:
        # unlink while still holding the lock; a waiter that opened the old file sees it is gone
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
