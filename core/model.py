"""The hybrid language model: embeddings -> [Block(mixer_i, ffn_i)] x n_layer -> norm -> head.

Components arrive as arguments (built from a config by `hybrid_mllm.core.build`), so this
file holds only the wiring. State is a tuple with one entry per layer, each the mixer's
own tuple of tensors (see `hybrid_mllm.core.mixer`): plain tensors, ready for export.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .decode import block_step, dense
from .mixer import State
from .norm import RMSNorm

ModelState = tuple[State, ...]


class LMOutput(NamedTuple):
    logits: Tensor  # (B, L_kept, vocab_size)
    state: ModelState  # one mixer state per layer
    aux_loss: Tensor  # () float32: the MoE load-balancing losses, summed over layers


class NoMixer(nn.Module):
    """The mixer of an FFN-only layer (Nemotron-H's MLP and MoE layers): no parameters, no state."""

    state_specs = ()

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        return ()

    def forward(self, x: Tensor, state: State | None = None, mask: Tensor | None = None):
        """x: (B, L, d_model) -> zeros, (): it adds nothing (its Block skips it)."""
        return torch.zeros_like(x), ()


class Block(nn.Module):
    """Pre-norm residual block: ``x + r * mixer(norm(x))``, then ``x + r * ffn(norm(x))``.

    Either part may be absent: ``ffn=None`` (pure Mamba models) or ``mixer=None`` (an FFN-only
    layer, whose mixer is a stateless `NoMixer`); r is ``residual_multiplier`` (Granite's).
    """

    def __init__(self, d_model: int, mixer: nn.Module | None, ffn: nn.Module | None, *, norm_eps: float = 1e-6,
                 residual_multiplier: float = 1.0, device=None, dtype=None):
        super().__init__()
        if mixer is None and ffn is None:
            raise ValueError("a block needs a mixer or an FFN")
        self.mixer_norm = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype) if mixer is not None else None
        self.mixer = mixer if mixer is not None else NoMixer()
        self.ffn_norm = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype) if ffn is not None else None
        self.ffn = ffn
        self.residual_multiplier = residual_multiplier

    def _residual(self, x: Tensor, y: Tensor) -> Tensor:
        return x + (y if self.residual_multiplier == 1.0 else y * self.residual_multiplier)

    def forward(self, x: Tensor, state: State | None = None, mask: Tensor | None = None):
        """x: (B, L, d_model) -> (x, new_state, aux_loss). Decoding, either half may run fused
        through a registered step (`hybrid_mllm.core.decode.block_step`)."""
        if self.mixer_norm is None:
            state = ()
        elif (step := block_step("mixer", self.mixer, self.mixer_norm, x, state, mask)) is not None:
            x, state = step.fn(self.mixer, self.mixer_norm, x, state, self.residual_multiplier)
        else:
            y, state = self.mixer(self.mixer_norm(x), state, mask)
            x = self._residual(x, y)
        if self.ffn is None:
            return x, state, x.new_zeros((), dtype=torch.float32)
        if (step := block_step("ffn", self.ffn, self.ffn_norm, x, (), None)) is not None:
            x, _ = step.fn(self.ffn, self.ffn_norm, x, (), self.residual_multiplier)
            return x, state, x.new_zeros((), dtype=torch.float32)  # decoding: no aux loss (no gradients)
        y, aux = self.ffn(self.ffn_norm(x))
        return self._residual(x, y), state, aux


class ScaledEmbedding(nn.Embedding):
    """A token embedding whose lookup is multiplied by `multiplier` (Gemma's sqrt(d_model),
    Granite's ``embedding_multiplier``); a tied LM head uses the unscaled table."""

    def __init__(self, vocab_size: int, d_model: int, *, multiplier: float = 1.0, device=None, dtype=None):
        super().__init__(vocab_size, d_model, device=device, dtype=dtype)
        self.multiplier = multiplier

    def forward(self, ids: Tensor) -> Tensor:
        """ids (...) -> (..., d_model)."""
        out = super().forward(ids)
        return out if self.multiplier == 1.0 else out * self.multiplier

    def table(self) -> Tensor:
        """What a lookup returns for every id, (vocab_size, d_model): the export's embedding table."""
        return self.weight * self.multiplier


class HybridLM(nn.Module):
    """Token embedding, blocks, final RMSNorm and LM head (optionally tied to the embedding);
    the logits are multiplied by `logits_multiplier` (Granite's 1 / logits_scaling, Falcon-H1's
    lm_head_multiplier)."""

    def __init__(self, vocab_size: int, d_model: int, blocks: list[Block], *, norm_eps: float = 1e-6,
                 tie_embeddings: bool = True, embedding_multiplier: float = 1.0, logits_multiplier: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        self.logits_multiplier = logits_multiplier
        self.embed = ScaledEmbedding(vocab_size, d_model, multiplier=embedding_multiplier, device=device, dtype=dtype)
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False, device=device, dtype=dtype)
        # small embeddings (GPT-2's 0.02): with nn.Embedding's N(0, 1) a tied head starts with
        # logits of std ~sqrt(d_model) and a loss many times log(vocab)
        nn.init.normal_(self.embed.weight, std=0.02)
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        self.activation_checkpointing = False  # recompute block activations in backward (training only)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> ModelState:
        """The state before the first token, one entry per layer."""
        return tuple(b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks)

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        state: ModelState | None = None,
        mask: Tensor | None = None,
        num_logits: int | None = None,
    ) -> LMOutput:
        """Run the sequence from `state` (the start when None).

        input_ids: (B, L) or inputs_embeds: (B, L, d_model); mask: (B, L) bool, False at
        padding; num_logits: compute logits for the last n positions only (prefill).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if (input_ids is not None and (num_logits is None or num_logits >= 1)
                and (whole := block_step("model", self, None, input_ids, state, mask)) is not None):
            logits, new_states = whole.fn(self, None, input_ids, state, None)  # decoding: the whole step in one call
            return LMOutput(logits, new_states, logits.new_zeros((), dtype=torch.float32))
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if (stack := block_step("stack", self.blocks, None, x, state, mask)) is not None:
            x, new_states = stack.fn(self.blocks, None, x, state, None)  # decoding: all blocks in one fused step
            aux = x.new_zeros((), dtype=torch.float32)
        else:
            x, new_states, aux = self._run_blocks(x, state, mask)
        if num_logits is not None:
            x = x[:, x.shape[1] - num_logits:]
        logits = dense(self.lm_head, self.norm(x))
        if self.logits_multiplier != 1.0:
            logits = logits * self.logits_multiplier
        return LMOutput(logits, tuple(new_states), aux)

    def _run_blocks(self, x: Tensor, state: ModelState | None, mask: Tensor | None):
        """x: (B, L, d_model) through each block -> (x, new states, summed aux loss)."""
        states = state if state is not None else (None,) * len(self.blocks)
        new_states, aux = [], x.new_zeros((), dtype=torch.float32)
        for block, layer_state in zip(self.blocks, states, strict=True):
            if self.activation_checkpointing and self.training:
                x, layer_state, layer_aux = checkpoint(block, x, layer_state, mask, use_reentrant=False)
            else:
                x, layer_state, layer_aux = block(x, layer_state, mask)
            new_states.append(layer_state)
            aux = aux + layer_aux
        return x, new_states, aux

    @torch.no_grad()
    def prefill(self, input_ids: Tensor | None = None, *, inputs_embeds: Tensor | None = None,
                chunk_size: int = 4096, state: ModelState | None = None, mask: Tensor | None = None) -> LMOutput:
        """Run a long prompt in chunks, carrying the state, so activations stay bounded.

        input_ids: (B, L) or inputs_embeds: (B, L, d_model); mask: (B, L).
        Returns the last position's logits (B, 1, vocab) and the state after the prompt.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        source = input_ids if input_ids is not None else inputs_embeds
        if source is None or source.shape[1] == 0:
            raise ValueError("prefill needs at least one token")
        out = None
        for start in range(0, source.shape[1], chunk_size):
            sl = slice(start, start + chunk_size)
            part = {"input_ids": input_ids[:, sl]} if input_ids is not None else {"inputs_embeds": inputs_embeds[:, sl]}
            out = self(**part, state=state, mask=None if mask is None else mask[:, sl], num_logits=1)
            state = out.state
        return out
