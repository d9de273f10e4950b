"""Convert language models between Hugging Face directories and our checkpoints.

``load_hf(dir)`` reads ``JambaForCausalLM``, ``MambaForCausalLM`` or ``LlamaForCausalLM``
(config.json + safetensors, single file or sharded) into a `HybridLM`; ``convert_hf(dir, out)``
writes it as our checkpoint; ``save_hf(model, config, out)`` writes ours back in the
Hugging Face layout for the architectures that map. ``load_llava`` / ``convert_llava`` read
``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration`` (CLIP or SigLIP
tower + projector + Llama) into our multimodal model; ``load_hf_vision`` /
``convert_hf_vision`` read a CLIP or SigLIP vision tower into our ``timm`` encoder.
``hf_kind`` says which of these a directory needs. The command is ``hybrid-convert``.
"""

from ._hf_io import ConversionError
from .auto import hf_kind
from .hf_lm import ARCHITECTURES, convert_hf, load_hf, save_hf
from .hf_vision import VISION_ARCHITECTURES, convert_hf_vision, load_hf_vision
from .llava import LLAVA_ARCHITECTURES, convert_llava, load_llava

__all__ = ["ARCHITECTURES", "LLAVA_ARCHITECTURES", "VISION_ARCHITECTURES", "ConversionError", "convert_hf",
           "convert_hf_vision", "convert_llava", "hf_kind", "load_hf", "load_hf_vision", "load_llava", "save_hf"]
