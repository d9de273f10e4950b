"""Convert language models between Hugging Face directories and our checkpoints.

``load_hf(dir)`` reads ``JambaForCausalLM``, ``MambaForCausalLM`` or ``LlamaForCausalLM``
(config.json + safetensors, single file or sharded) into a `HybridLM`; ``convert_hf(dir, out)``
writes it as our checkpoint; ``save_hf(model, config, out)`` writes ours back in the
Hugging Face layout for the architectures that map. The command is ``hybrid-convert``.
"""

from ._hf_io import ConversionError
from .hf_lm import ARCHITECTURES, convert_hf, load_hf, save_hf

__all__ = ["ARCHITECTURES", "ConversionError", "convert_hf", "load_hf", "save_hf"]
