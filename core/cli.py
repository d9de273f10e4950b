"""What every command shares: user errors on stderr without a traceback, exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import HybridError


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a `HybridError` prints ``error: <message>`` and returns 2."""
    try:
        return main(argv) or 0
    except HybridError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def check_device(name: str | None) -> str | None:
    """A ``--device`` value that torch can use here, or a `HybridError` saying why not."""
    import torch

    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HybridError(f"--device {name!r}: not a device name (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HybridError(f"--device {name}: no CUDA GPU is visible to torch here; use --device cpu")
    return name


def check_at_least_one(*flags: tuple[str, float | None]) -> None:
    """Refuse (`HybridError`) a count or size flag below 1, e.g. ``("--max-tiles", args.max_tiles)``;
    None is a flag not given."""
    for flag, value in flags:
        if value is not None and value < 1:
            raise HybridError(f"{flag} must be >= 1, got {value}")
