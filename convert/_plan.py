"""Weight plans: which checkpoint tensors make each of our tensors, checked before anything is read.

A plan maps our tensor name to its sources, ``[(their name, their shape), ...]``. Most
tensors have one source; a fused tensor has several (timm's ``qkv`` is q, k and v
stacked), which are flattened, concatenated and reshaped to our shape. `check_plan`
reads only the file headers and lists every missing, unexpected or mis-shaped tensor
in one error; `fill_from_plan` then copies the tensors in file order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._hf_io import ConversionError, HFWeights

Plan = dict[str, list[tuple[str, tuple[int, ...]]]]  # our name -> [(their name, their shape), ...]
SHOWN = 4  # problems listed per kind, then a count


def check_plan(plan: Plan, weights: HFWeights, head: str, *, ignorable: Callable[[str], bool] = lambda _: False,
               implied_by: str = "config.json") -> None:
    """Raise a `ConversionError` (``head``, then one line per problem) unless the checkpoint
    holds exactly the plan's tensors, with their shapes; `ignorable` names the extra tensors
    that may be present and are not read (a head we drop, layers after the feature layer)."""
    expected = {theirs: shape for sources in plan.values() for theirs, shape in sources}
    present = weights.names()
    missing = sorted(set(expected) - present)
    unexpected = sorted(n for n in present - set(expected) if not ignorable(n))
    mismatched = [f"{n} is {shape}, {implied_by} implies {expected[n]}"
                  for n in sorted(set(expected) & present) if (shape := weights.shape(n)) != expected[n]]
    problems = []
    kinds = (("missing tensor", missing), ("unexpected tensor", unexpected), ("shape mismatch", mismatched))
    for label, found in kinds:
        problems += [f"{label}: {item}" for item in found[:SHOWN]]
        if len(found) > SHOWN:
            problems.append(f"... and {len(found) - SHOWN} more ({label}: {len(found)} in all)")
    if problems:
        raise ConversionError(head, problems)


def fill_from_plan(params: dict[str, torch.Tensor], plan: Plan, weights: HFWeights) -> None:
    """Copy every planned tensor into `params` (cast to its dtype), one at a time, in file
    order so that each shard is mapped once."""
    order = sorted(plan.items(), key=lambda item: (weights.path(item[1][0][0]), item[1][0][0]))
    with torch.no_grad():
        for ours, sources in order:
            parts = [weights.read(theirs).reshape(-1) for theirs, _ in sources]
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            params[ours].copy_(flat.reshape(params[ours].shape))
