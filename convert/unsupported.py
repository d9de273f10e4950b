"""Hugging Face architectures we know and do not convert, each with the reason in one line."""

from __future__ import annotations

UNSUPPORTED = {
    "Zamba2ForCausalLM": (
        "Zamba2's shared attention blocks (one transformer block whose weights every hybrid layer reuses, "
        "fed the concatenation of the hidden state and the original embeddings, with per-layer LoRA "
        "adapters) do not fit our block model, where each block owns its mixer and FFN; Mamba2ForCausalLM, "
        "NemotronHForCausalLM and BambaForCausalLM convert"),
    "FalconH1ForCausalLM": (
        "Falcon-H1 runs attention and Mamba-2 side by side in every layer (parallel hybrid heads), and our "
        "blocks hold one mixer each; Mamba2ForCausalLM, NemotronHForCausalLM and BambaForCausalLM convert"),
}
