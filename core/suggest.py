"""'Did you mean' suggestions for unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> str:
    """One-line message for an unknown name: what, did-you-mean, what is available."""
    choices = sorted(choices)
    available = ", ".join(choices) if choices else "(none registered)"
    return f"unknown {kind} '{name}'.{did_you_mean(name, choices)} Available: {available}"
