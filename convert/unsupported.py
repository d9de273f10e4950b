"""Hugging Face architectures we know and do not convert, each with the reason in one line."""

from __future__ import annotations

UNSUPPORTED = {
    "Zamba2ForCausalLM": (
        "Zamba2's shared attention blocks (one transformer block whose weights every hybrid layer reuses, "
        "fed the concatenation of the hidden state and the original embeddings, with per-layer LoRA "
        "adapters) do not fit our block model, where each block owns its mixer and FFN; Mamba2ForCausalLM, "
        "NemotronHForCausalLM, BambaForCausalLM and FalconH1ForCausalLM convert"),
}
