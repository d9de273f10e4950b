"""hybrid_mllm.core.text: tokenizers and conversation templates, the text side of the model."""

from .templates import IGNORE_INDEX, TEMPLATES, Rendered, Template, TemplateError, get_template
from .tokenizer import (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)

__all__ = ["IGNORE_INDEX", "IMAGE_TOKEN", "TEMPLATES", "VIDEO_TOKEN", "ByteTokenizer", "HFTokenizer", "Rendered",
           "Template", "TemplateError", "Tokenizer", "TokenizerError", "get_template", "load_tokenizer"]
