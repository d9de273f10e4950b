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

from .schema import describe
from .suggest import did_you_mean, unknown
from .text.templates import TEMPLATES

TOKENIZER_TYPES = ("byte", "hf")


@dataclass
class TextConfig:
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"type": "byte"})
    template: str = "chatml"
    max_context: int = 131072
    max_visual_tokens: int | None = None


def parse_text(raw: Any, problems: list[str]) -> TextConfig:
    """Validate the ``text:`` mapping (absent: a byte tokenizer and the ChatML template)."""
    if raw is None:
        return TextConfig()
    if not isinstance(raw, dict):
        problems.append(f"text: expected a mapping, got {describe(raw)}")
        return TextConfig()
    allowed = ("tokenizer", "template", "max_context", "max_visual_tokens")
    problems.extend(f"text.{k}: unknown key.{did_you_mean(k, allowed)} (allowed: {', '.join(allowed)})"
                    for k in raw if k not in allowed)
    out = TextConfig()
    tokenizer = raw.get("tokenizer", out.tokenizer)
    if not isinstance(tokenizer, dict) or tokenizer.get("type", "byte") not in TOKENIZER_TYPES:
        kind = tokenizer.get("type") if isinstance(tokenizer, dict) else tokenizer
        problems.append(f"text.tokenizer: {unknown('tokenizer type', kind, TOKENIZER_TYPES)}")
    elif tokenizer.get("type") == "hf" and not isinstance(tokenizer.get("path"), str):
        problems.append("text.tokenizer.path: an hf tokenizer needs the path of its tokenizer.json")
    else:
        out.tokenizer = {"type": "byte", **tokenizer}
    template = raw.get("template", out.template)
    if not isinstance(template, str) or template not in TEMPLATES:
        problems.append(f"text.template: {unknown('template', template, TEMPLATES)}")
    else:
        out.template = template
    max_context = raw.get("max_context", out.max_context)
    if not isinstance(max_context, int) or isinstance(max_context, bool) or max_context < 1:
        problems.append(f"text.max_context: expected an int >= 1, got {describe(max_context)}")
    else:
        out.max_context = max_context
    cap = raw.get("max_visual_tokens")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        problems.append(f"text.max_visual_tokens: expected an int >= 1 (or no key for no cap), got {describe(cap)}")
    else:
        out.max_visual_tokens = cap
    return out
