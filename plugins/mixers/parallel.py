"""Registered mixers side by side on the same input, their outputs summed (Falcon-H1's parallel
hybrid layer: attention + Mamba-2 in every block)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from hybrid_mllm.core.errors import RegistryError
from hybrid_mllm.core.mixer import State, StateSpec
from hybrid_mllm.core.registry import get_registry
from hybrid_mllm.core.schema import check_options


class Parallel(nn.Module):
    """``y = sum_i part_i(x)``: every part is a registered mixer, given its options by name::

        parallel: {parts: {mamba2: {d_state: 16}, attention: {n_head: 8, rope: true}}}

    Each part sees the same x and mask and keeps its own state. State: the parts' states
    concatenated in the order of ``parts``, each tensor named ``<part>.<name>`` in
    ``state_specs`` (so a KV cache still says which dimension grows). Shapes: x, y (B, L, d_model).
    Export needs nothing of its own: each part exports as it declares (a Mamba-2 part as its
    SSD node), the sum is an Add.
    """

    def __init__(self, d_model: int, *, parts: dict[str, dict[str, Any]], device=None, dtype=None):
        super().__init__()
        built = _build_parts(d_model, parts, {"device": device, "dtype": dtype})
        self.parts = nn.ModuleDict(built)
        self.sizes = [len(part.state_specs) for part in built.values()]  # state tensors per part
        self.state_specs = tuple(StateSpec(f"{name}.{spec.name}", spec.seq_dim)
                                 for name, part in built.items() for spec in part.state_specs)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        return tuple(t for part in self.parts.values() for t in part.init_state(batch_size, device=device, dtype=dtype))

    def forward(self, x: Tensor, state: State | None = None, mask: Tensor | None = None) -> tuple[Tensor, State]:
        """x: (B, L, d_model), mask: (B, L) -> y: (B, L, d_model), the parts' new states concatenated."""
        y, new_state, start = None, [], 0
        for part, size in zip(self.parts.values(), self.sizes, strict=True):
            y_part, part_state = part(x, None if state is None else tuple(state[start:start + size]), mask)
            y = y_part if y is None else y + y_part
            new_state.extend(part_state)
            start += size
        return y, tuple(new_state)


def _build_parts(d_model: int, parts: Any, factory: dict) -> dict[str, nn.Module]:
    """Each part built from the registry; a ValueError lists every problem, each naming ``parts.<name>``."""
    if not isinstance(parts, dict) or not parts:
        raise ValueError(f"parts: expected a mapping of mixer name -> options, at least one, got {parts!r}")
    registry, problems, built = get_registry(), [], {}
    for name, options in parts.items():
        if name == "parallel":
            problems.append("parts.parallel: a parallel mixer cannot hold another (list its parts instead)")
            continue
        try:
            cls = registry.get("mixer", name)
        except RegistryError as e:
            problems.append(f"parts.{name}: {e}")
            continue
        resolved, found = check_options(cls, options, f"parts.{name}")
        problems.extend(found)
        if not found:
            try:
                built[name] = cls(d_model, **resolved, **factory)
            except (ValueError, RegistryError) as e:  # the part's own check, e.g. n_head | d_model
                problems.append(f"parts.{name}: {e}")
    if problems:
        raise ValueError("; ".join(problems))
    return built
