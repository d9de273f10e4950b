"""Atomic writes: a file or a directory appears whole, or not at all (and never half-replaced).

`replacing(path)` gives a temporary sibling to write, fsynced and renamed onto `path` when
the block ends without an error (removed otherwise); `write_atomic` writes bytes or text
that way. `write_directory` does the same for a directory (checkpoints, export directories):
`fill(tmp)` writes into a temporary sibling directory, which is fsynced and renamed into place.
A crash leaves either the old target or the new one; `remove_partial` clears what it left.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CheckpointError


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write into; renamed onto `path` (after an fsync) when
    the block succeeds, removed when it fails. Each writer has its own temporary file, so
    concurrent writers of one path never mix their bytes: the last rename wins."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write `data` to `path` atomically (see `replacing`)."""
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_directory(out_dir: Path, fill: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Create `out_dir` atomically: `fill(tmp)` writes into a temporary sibling, which is
    fsynced and renamed into place; on any failure it is removed and `out_dir` is untouched."""
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"{out_dir} already exists: choose another directory or pass overwrite=True")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        fill(tmp)
        _make_readable(tmp)
        _fsync_tree(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def remove_partial(parent: Path) -> list[Path]:
    """Remove what an interrupted `write_directory` into `parent` left: hidden ``.NAME.tmp-*``
    directories (never renamed into place) and ``.NAME.old-*`` ones (replaced targets).
    A kill between `_replace_dir`'s two renames leaves ``.NAME.old-*`` and no NAME: that old
    directory is the last complete checkpoint, so it is renamed back to NAME first.
    Only safe while no other process writes there (a trainer calls it under its lock)."""
    _restore_moved_aside(parent)
    leftovers = [p for pattern in (".*.tmp-*", ".*.old-*") for p in parent.glob(pattern) if p.is_dir()]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def _restore_moved_aside(parent: Path) -> None:
    """Rename ``.NAME.old-PID`` back to NAME where NAME is missing (the newest, if several)."""
    olds = sorted((p for p in parent.glob(".*.old-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in reversed(olds):  # newest first: it wins when several were moved aside
        target = parent / old.name[1:].rsplit(".old-", 1)[0]
        if not target.exists():
            os.replace(old, target)



def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_readable(directory: Path) -> None:
    """Permissions like any directory the user creates (mkdtemp makes it private), umask applied."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing target is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
