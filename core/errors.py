"""The project's exceptions: one base class, a few kinds.

User mistakes (bad YAML, unknown names, missing kernels) raise a subclass of
`HybridError`; the CLIs print its message on one line per problem and exit non-zero,
without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HybridError(Exception):
    """Base class of every error a user can cause and fix."""


class ConfigError(HybridError):
    """A configuration (YAML or options) has one or more problems.

    `problems` holds one line per problem, each starting with its YAML path. One problem
    reads as one line (``c.yaml: model.d_model: ...``); several as a head line and one per problem.
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(f"{source}: {self.problems[0]}")
            return
        head = f"{source} has {len(self.problems)} problems"
        super().__init__("\n".join([head] + [f"  {p}" for p in self.problems]))


class RegistryError(HybridError):
    """An unknown or duplicate component name."""


class CheckpointError(HybridError):
    """A checkpoint directory that is missing, incomplete or does not fit the model."""


class KernelUnavailableError(HybridError):
    """A requested scan kernel cannot run here (package missing, wrong device)."""


class InputError(HybridError):
    """A request the model cannot take: bad images or videos, a prompt longer than the context."""


class ResourceError(HybridError):
    """A request over a resource limit: more visual tokens than allowed, more memory than is free."""
