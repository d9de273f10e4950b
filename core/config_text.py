"""The ``text:`` section of a config: tokenizer, conversation template, context length.

```yaml
text:
  tokenizer: {type: byte}       # or {type: hf, path: tokenizer.json}, relative to the config file
  template: chatml              # plain | chatml | vicuna: stored with the model, used at inference
  max_context: 131072           # prompts with more text + visual tokens are refused
  max_visual_tokens: 65536      # optional: refuse requests with more visual tokens (hybrid-run --max-visual-tokens)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .schema import check_options, describe
from .suggest import unknown
from .text.templates import TEMPLATES

TOKENIZER_TYPES = ("byte", "hf")


@dataclass(kw_only=True)
class TextConfig:
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"type": "byte"})
    template: str = "chatml"
    max_context: int = 131072
    max_visual_tokens: int | None = None


def parse_text(raw: Any, problems: list[str]) -> TextConfig:
    """Validate the ``text:`` mapping (absent: a byte tokenizer and the ChatML template)."""
    if raw is not None and not isinstance(raw, dict):
        problems.append(f"text: expected a mapping, got {describe(raw)}")
        return TextConfig()
    options, found = check_options(TextConfig, raw, "text", noun="key")
    problems.extend(found)
    if found:
        return TextConfig()
    tokenizer = options["tokenizer"]
    if tokenizer.get("type", "byte") not in TOKENIZER_TYPES:
        problems.append(f"text.tokenizer: {unknown('tokenizer type', tokenizer.get('type'), TOKENIZER_TYPES)}")
    elif tokenizer.get("type") == "hf" and not isinstance(tokenizer.get("path"), str):
        problems.append("text.tokenizer.path: an hf tokenizer needs the path of its tokenizer.json")
    if options["template"] not in TEMPLATES:
        problems.append(f"text.template: {unknown('template', options['template'], TEMPLATES)}")
    if options["max_context"] < 1:
        problems.append(f"text.max_context: must be >= 1, got {options['max_context']}")
    cap = options["max_visual_tokens"]
    if cap is not None and cap < 1:
        problems.append(f"text.max_visual_tokens: must be >= 1 (or no key for no cap), got {cap}")
    options["tokenizer"] = {"type": "byte", **tokenizer}
    return TextConfig(**options)
