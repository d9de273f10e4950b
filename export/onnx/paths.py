"""What the model runs while it is traced for export, switched explicitly and restored after.

- every Mamba mixer's scan (``impl``) becomes the ``hybrid::SelectiveScan`` op (both
  flavours: the standard flavour then defines that node in standard ops, see
  `standard_ops`);
- for the ``custom`` flavour, Mamba's causal conv1d becomes the ``hybrid::CausalConv1d`` op
  (the standard flavour keeps it as the slices and adds it already is);
- every MoE layer is wrapped by `ExportMoE` (see `moe`);
- for the ``standard`` flavour (ONNX Runtime), softplus becomes ops its CPU kernels run
  fast (see `softplus`).

Nothing is guessed from the model's configured kernels: the flavour names the path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hybrid_mllm.core.ffn import MoE
from hybrid_mllm.core.model import HybridLM
from hybrid_mllm.plugins.mixers.mamba import Mamba

from . import custom_ops
from .moe import TRANSLATIONS as MOE_TRANSLATIONS
from .moe import ExportMoE
from .softplus import TRANSLATIONS as SOFTPLUS_TRANSLATIONS

FLAVOURS = ("standard", "custom")


@contextmanager
def export_paths(lm: HybridLM, flavour: str) -> Iterator[dict]:
    """Switch `lm` to the export path of `flavour`; yields the exporter's custom translation table."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    saved_impls = {m: m.impl for m in lm.modules() if isinstance(m, Mamba)}
    saved_ffns = {b: b.ffn for b in lm.blocks if isinstance(b.ffn, MoE)}
    with custom_ops.custom_op_paths(conv=flavour == "custom") as translations:
        try:
            for mamba in saved_impls:
                mamba.impl = custom_ops.KERNEL_NAME
            for block, moe in saved_ffns.items():
                block.ffn = ExportMoE(moe)
            yield {**MOE_TRANSLATIONS, **translations, **(SOFTPLUS_TRANSLATIONS if flavour == "standard" else {})}
        finally:
            for mamba, impl in saved_impls.items():
                mamba.impl = impl
            for block, moe in saved_ffns.items():
                block.ffn = moe
