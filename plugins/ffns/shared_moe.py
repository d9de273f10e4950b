"""Granite-4.0-H's FFN: top-k routed SwiGLU experts plus one shared SwiGLU every token takes.

``y = moe(x) + shared(x)``, the router's top-k weights renormalised over the k (transformers'
GraniteMoeHybridTopKRouter: a softmax over the top-k logits, the same numbers). Built from
the core's `MoE` and `SwiGLU`, so MoE's export declaration covers its experts.
"""

from __future__ import annotations

from torch import Tensor, nn

from hybrid_mllm.core.ffn import MoE, SwiGLU


class SharedMoE(nn.Module):
    """x: (B, L, d_model) -> (routed(x) + shared(x), the routed experts' aux_loss)."""

    def __init__(self, d_model: int, *, n_experts: int = 4, top_k: int = 2, d_hidden: int | None = None,
                 shared_d_hidden: int | None = None, normalize_top_k: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.routed = MoE(d_model, n_experts=n_experts, top_k=top_k, d_hidden=d_hidden,
                          normalize_top_k=normalize_top_k, **factory)
        self.shared = SwiGLU(d_model, d_hidden=shared_d_hidden or d_hidden, **factory)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, aux = self.routed(x)
        return y + self.shared(x)[0], aux
