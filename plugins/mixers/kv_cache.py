"""A growing cache tensor appended in place: the KV cache without a `torch.cat` per step.

The state stays a plain tensor of exactly the cached length (the explicit-state contract:
export, the server's slot table and the tests see no difference). When `append` allocates,
it reserves room after the data and hands back the filled front of that buffer as a view;
the buffer carries a fill counter. The next `append` to that view writes the new positions
into the room and returns a longer view: no copy of the past. Anything else (a tensor from
elsewhere, no room left, or an older state appended to again, whose positions after it are
already taken) is copied into a new buffer, so every state stays valid and unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

MIN_ROOM = 256  # positions reserved per allocation, at least
GROWTH = 8  # ... or 1/GROWTH of the new length: reallocations amortise to O(1) copies per step


def append(past: Tensor, new: Tensor, dim: int) -> Tensor:
    """past (..., S, ...) and new (..., L, ...) along `dim` -> the (..., S + L, ...) concatenation."""
    view = extend(past, new.shape[dim], dim)
    view.narrow(dim, past.shape[dim], new.shape[dim]).copy_(new)
    return view


def extend(past: Tensor, length: int, dim: int) -> Tensor:
    """past (..., S, ...) -> a (..., S + length, ...) view whose first S positions are `past`'s
    and whose last `length` are unwritten (the caller fills them, as a C step does)."""
    filled = past.shape[dim]
    buffer = getattr(past, "_kv_buffer", None)  # set on the views this function returns
    if not (buffer is not None and buffer._kv_filled == filled and buffer.shape[dim] >= filled + length
            and past.data_ptr() == buffer.data_ptr() and past.stride() == buffer.stride()
            and _same_but(past.shape, buffer.shape, dim)):
        shape = list(past.shape)
        shape[dim] = filled + length + max(MIN_ROOM, (filled + length) // GROWTH)
        buffer = past.new_empty(shape)
        buffer.narrow(dim, 0, filled).copy_(past)
    buffer._kv_filled = filled + length
    view = buffer.narrow(dim, 0, filled + length)
    view._kv_buffer = buffer  # an attribute, not `view._base`: inference mode keeps no view base
    return view


def _same_but(a: torch.Size, b: torch.Size, dim: int) -> bool:
    return len(a) == len(b) and all(x == y for i, (x, y) in enumerate(zip(a, b)) if i != dim)
