"""The vision-encoder and connector contracts.

An encoder is built as ``cls(*, <options>, device=None, dtype=None)`` and exposes
``image_size`` (the tile side in pixels it expects), ``grid`` (its patch grid per tile,
(gh, gw)), ``out_dim``, ``num_prefix_tokens`` (CLS / register tokens it keeps), ``mean`` /
``std`` (the pixel normalisation it was trained with) and
``forward(pixels (N, 3, S, S)) -> EncoderOutput``.

A connector is built as ``cls(d_model, *, in_dim, <options>)`` (``in_dim`` comes from the
encoder, not from YAML) and maps a feature grid ``(N, gh, gw, in_dim)`` to
``(N, gh', gw', d_model)``; ``out_grid((gh, gw)) -> (gh', gw')`` says how many tokens it emits.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class EncoderOutput(NamedTuple):
    patches: Tensor  # (N, gh, gw, out_dim): the patch features, spatially arranged
    prefix: Tensor  # (N, P, out_dim): CLS / register tokens kept (P = 0 when dropped)
