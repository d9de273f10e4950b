"""Paths read from user files (data records, checkpoint indexes, manifests), kept inside their directory."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HybridError


def confined(root: Path, relative: str, *, where: str, error: type[HybridError] = HybridError) -> Path:
    """root / relative, refusing absolute paths and ``..`` climbing out of `root`; `where`
    names the root in the errors ("the data root"). Checked on the text, not resolved:
    symbolic links the user made inside `root` (the HF cache links shards to ``blobs/``) stay usable."""
    if Path(relative).is_absolute():
        raise error(f"absolute path '{relative}': paths must be relative to {where}")
    normal = os.path.normpath(relative)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise error(f"path '{relative}' leaves {where} {root}")
    return root / normal
