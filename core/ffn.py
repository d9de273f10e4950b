"""Feed-forward layers of a block: a SwiGLU MLP (``mlp``), or a mixture of SwiGLU experts (``moe``).

Both return ``(y, aux_loss)`` so the model treats them alike; the MLP's aux loss is 0.
A block may also have no FFN at all (``none``: pure Mamba models). They are registered
through the ``register_ffns`` hook like a third party's, and MoE's export declaration
(`ffn_export`) through ``register_exports``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .decode import dense, fast_decode
from .exportable import Exportable
from .hookspecs import hookimpl


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)). x: (..., d_model) -> (..., d_model), aux_loss 0."""

    def __init__(self, d_model: int, *, d_hidden: int | None = None, bias: bool = False, device=None, dtype=None):
        super().__init__()
        d_hidden = d_hidden or 4 * d_model
        factory = {"device": device, "dtype": dtype}
        self.gate = nn.Linear(d_model, d_hidden, bias=bias, **factory)
        self.up = nn.Linear(d_model, d_hidden, bias=bias, **factory)
        self.down = nn.Linear(d_hidden, d_model, bias=bias, **factory)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return dense(self.down, F.silu(dense(self.gate, x)) * dense(self.up, x)), x.new_zeros((), dtype=torch.float32)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (Jamba / Mixtral style).

    The router's softmax over all experts gives each token's top-k experts and weights
    (renormalised over the k when ``normalize_top_k``; Jamba does not). The auxiliary
    load-balancing loss (Switch Transformer) is ``n_experts * sum_e f_e * P_e``, f_e the
    fraction of routed slots sent to expert e, P_e its mean router probability; decoding a few
    tokens (`fast_decode`) it is 0, since it only trains the router.
    """

    def __init__(
        self,
        d_model: int,
        *,
        n_experts: int = 4,
        top_k: int = 2,
        d_hidden: int | None = None,
        normalize_top_k: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"need 1 <= top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        self.n_experts, self.top_k, self.normalize_top_k = n_experts, top_k, normalize_top_k
        self.router = nn.Linear(d_model, n_experts, bias=False, device=device, dtype=dtype)
        self.experts = nn.ModuleList(
            SwiGLU(d_model, d_hidden=d_hidden, device=device, dtype=dtype) for _ in range(n_experts)
        )

    def route(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """tokens (T, d) -> router probabilities (T, E) float32, each token's top-k weights (T, k)
        and experts (T, k)."""
        probs = torch.softmax(dense(self.router, tokens).float(), dim=-1)  # (T, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (T, k)
        if self.normalize_top_k:
            weights = weights / weights.sum(-1, keepdim=True)
        return probs, weights, chosen

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model) -> y: (B, L, d_model), aux_loss: () float32."""
        tokens = x.reshape(-1, x.shape[-1])  # (T, d)
        if tokens.shape[0] == 0:  # an empty batch or sequence: nothing to route (torch.cat needs a part)
            return torch.zeros_like(x), x.new_zeros((), dtype=torch.float32)
        probs, weights, chosen = self.route(tokens)
        few = fast_decode() and tokens.shape[0] * self.top_k <= self.n_experts
        dispatch = self._each_slot if few else self._dispatch
        y = dispatch(tokens, chosen).view(*chosen.shape, -1)  # (T, k, d): each slot's expert output
        y = (y * weights[..., None].to(y.dtype)).sum(1)
        if few:  # decoding: the aux loss only trains the router
            return y.view_as(x), x.new_zeros((), dtype=torch.float32)
        routed = F.one_hot(chosen, self.n_experts).float().sum(1)  # (T, E): 1 where chosen
        aux = self.n_experts * (routed.mean(0) / self.top_k * probs.mean(0)).sum()
        return y.view_as(x), aux

    def _dispatch(self, tokens: Tensor, chosen: Tensor) -> Tensor:
        """Run each routed (token, slot) through its expert, grouped by expert so every expert
        sees one contiguous batch. tokens: (T, d), chosen: (T, k) -> (T * k, d) in slot order."""
        flat = chosen.reshape(-1)  # (T*k,)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts).tolist()
        grouped = tokens[order // self.top_k]  # (T*k, d), grouped by expert
        outputs = torch.cat([expert(part)[0] for expert, part, count in zip(self.experts, grouped.split(counts), counts)
                             if count])
        return torch.empty_like(outputs).index_copy_(0, order, outputs)

    def _each_slot(self, tokens: Tensor, chosen: Tensor) -> Tensor:
        """`_dispatch` for a few tokens (decoding): each (token, slot) straight through its
        expert, no sort or scatter. tokens: (T, d), chosen: (T, k) -> (T * k, d) in slot order."""
        return torch.cat([self.experts[e](tokens[t:t + 1])[0] for t, row in enumerate(chosen.tolist()) for e in row])


def _trace_moe(moe: MoE, flavour: str) -> nn.Module:
    from .ffn_export import ExportMoE  # defines a torch op: only when exporting

    return ExportMoE(moe)


def _moe_ops():
    from .ffn_export import moe_ops

    return moe_ops()


@hookimpl
def register_ffns(register):
    register("mlp", SwiGLU)
    register("moe", MoE)


@hookimpl
def register_exports(register):
    register(MoE, Exportable(trace=_trace_moe, ops=_moe_ops,
                             description="each expert one op, translated to sparse standard ONNX ops"))
