"""Conversation templates: messages -> token ids plus the labels a model learns from.

A template is chosen by name in YAML (`get_template`) and stored with the model, so training
and inference format conversations the same way. Three are built in:

- ``plain``: LLaVA's pretraining format: the user's ``<image>``/``<video>`` placeholders (their
  text is dropped, as LLaVA does: stage 1 learns captions, not instructions), the caption, eos.
- ``chatml``: ``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n...<|im_end|>\\n``.
- ``vicuna``: LLaVA-1.5's ``v1``: ``<s>SYSTEM USER: ... ASSISTANT: ...</s>USER: ...``.

Labels copy the ids of each assistant answer and of its end marker and hold `IGNORE_INDEX`
elsewhere. Prompt text is encoded separately from answers, so the ids rendered with
``add_generation_prompt=True`` are exactly a prefix of the training ids of the same
conversation (a BPE merge across the prompt/answer boundary would make them differ).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import HybridError
from ..suggest import unknown
from .tokenizer import IM_END, IM_START, IMAGE_TOKEN, VIDEO_TOKEN, Tokenizer

IGNORE_INDEX = -100  # what torch's cross_entropy skips by default

# LLaVA's `from` names map onto the chat roles.
_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
_PLACEHOLDER = re.compile(f"{re.escape(IMAGE_TOKEN)}|{re.escape(VIDEO_TOKEN)}")


class TemplateError(HybridError):
    """A conversation that a template cannot render, or an unknown template name."""


@dataclass
class Rendered:
    """Token ids of a conversation and, position by position, the ids to learn or IGNORE_INDEX."""

    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


class _Builder:
    """Collects ids and labels. Consecutive prompt text is encoded in one piece, so it tokenizes
    as naturally as the tokenizer allows; answers and marker ids break the pieces."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.out = Rendered()
        self._pending: list[str] = []

    def prompt(self, text: str) -> None:
        self._pending.append(text)

    def token(self, token_id: int, *, learn: bool = False) -> None:
        self._flush()
        self._add([token_id], learn)

    def answer(self, text: str) -> None:
        self._flush()
        self._add(self.tokenizer.encode(text), True)

    def done(self) -> Rendered:
        self._flush()
        return self.out

    def _flush(self) -> None:
        if self._pending:
            self._add(self.tokenizer.encode("".join(self._pending)), False)
            self._pending.clear()

    def _add(self, ids: list[int], learn: bool) -> None:
        self.out.ids += ids
        self.out.labels += ids if learn else [IGNORE_INDEX] * len(ids)


def _normalize(messages: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(role, content) pairs from chat-style or LLaVA-style messages, roles mapped to chat names."""
    pairs = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TemplateError(f"message {i}: expected a mapping with 'role' and 'content' (or LLaVA's "
                                f"'from' and 'value'), got {message!r}")
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if not isinstance(role, str) or role not in _ROLES:
            raise TemplateError(f"message {i}: {unknown('role', role, _ROLES)}")
        if not isinstance(content, str):
            raise TemplateError(f"message {i} ({role}): 'content' (or LLaVA's 'value') must be a string, "
                                f"got {content!r}")
        role = _ROLES[role]
        if role == "user" and not content.strip():
            raise TemplateError(f"message {i} (user) is empty: give the prompt some text, or an image or video")
        media = _PLACEHOLDER.search(content)
        if role != "user" and media:
            raise TemplateError(f"message {i} ({role}) contains '{media.group()}': images and videos go in "
                                f"user messages")
        pairs.append((role, content))
    return pairs


class Template:
    """A conversation format. Subclasses fill in the four pieces below; `render` does the rest.

    After an optional system message (where `allows_system`), roles must alternate user,
    assistant, user, ...; each assistant turn is `_assistant_prefix`, the answer, the end
    marker `_end_id`, then `after_end`.
    """

    name: str
    description: str
    allows_system = True
    required_tokens: tuple[str, ...] = ()  # special tokens the tokenizer must have
    stop_strings: tuple[str, ...] = ()  # text that ends an answer, for runtimes that match text
    after_end = ""

    def _begin(self, b: _Builder, system: str | None) -> None:
        """Whatever comes before the first user message (bos, system prompt)."""

    def _user(self, b: _Builder, content: str) -> None:
        raise NotImplementedError

    def _assistant_prefix(self, b: _Builder) -> None:
        raise NotImplementedError

    def _end_id(self, tokenizer: Tokenizer) -> int:
        return tokenizer.eos_id

    def stop_token_ids(self, tokenizer: Tokenizer) -> list[int]:
        """Ids that end generation: the end marker, then eos when it differs."""
        return list(dict.fromkeys([self._end_id(tokenizer), tokenizer.eos_id]))

    def render(self, messages: Iterable[Mapping[str, Any]], tokenizer: Tokenizer, *,
               add_generation_prompt: bool = False) -> Rendered:
        """Ids and labels of `messages` (``{"role", "content"}`` or LLaVA's ``{"from", "value"}``).

        ``<image>``/``<video>`` in user content become one `image_id`/`video_id` each. With
        `add_generation_prompt` the conversation must end with a user message and the ids end
        with the assistant prefix, ready for generation.
        """
        pairs = _normalize(messages)
        self._check_order(pairs, add_generation_prompt)
        for token in self.required_tokens:
            if token not in tokenizer.special_tokens:
                raise TemplateError(
                    f"template '{self.name}' needs the special token {token!r}, which the tokenizer lacks; add "
                    f"extra_special_tokens: {list(self.required_tokens)} to the tokenizer spec")
        b = _Builder(tokenizer)
        system = pairs.pop(0)[1] if pairs[0][0] == "system" else None
        self._begin(b, system)
        for role, content in pairs:
            if role == "user":
                self._user(b, content)
            else:
                self._assistant_prefix(b)
                b.answer(content)
                b.token(self._end_id(tokenizer), learn=True)
                b.prompt(self.after_end)
        if add_generation_prompt:
            self._assistant_prefix(b)
        return b.done()

    def _check_order(self, pairs: list[tuple[str, str]], add_generation_prompt: bool) -> None:
        if not pairs:
            raise TemplateError("the conversation is empty: give at least one user message")
        start = 1 if pairs[0][0] == "system" else 0
        if start and not self.allows_system:
            raise TemplateError(f"message 0 (system): template '{self.name}' has no system prompt; "
                                f"drop the message or choose another template")
        if start == len(pairs):
            raise TemplateError("message 0 (system) is the whole conversation: add a user message after it")
        for i in range(start, len(pairs)):
            expected = "user" if (i - start) % 2 == 0 else "assistant"
            if pairs[i][0] != expected:
                raise TemplateError(
                    f"message {i} is {pairs[i][0]} but template '{self.name}' expects {expected} there: after an "
                    f"optional system message, roles alternate user, assistant, user, ...")
        if add_generation_prompt and pairs[-1][0] != "user":
            raise TemplateError(f"message {len(pairs) - 1} is assistant, but add_generation_prompt=True "
                                f"needs the conversation to end with a user message")

    def __repr__(self) -> str:
        return f"<template {self.name!r}>"


class PlainTemplate(Template):
    name = "plain"
    description = "LLaVA pretraining: media placeholders, then the caption and eos; no roles"
    allows_system = False

    def _begin(self, b: _Builder, system: str | None) -> None:
        if b.tokenizer.bos_id is not None:
            b.token(b.tokenizer.bos_id)

    def _user(self, b: _Builder, content: str) -> None:
        b.prompt("".join(_PLACEHOLDER.findall(content)))

    def _assistant_prefix(self, b: _Builder) -> None:
        pass  # the caption follows the placeholders directly


class ChatMLTemplate(Template):
    name = "chatml"
    description = "ChatML (Qwen): <|im_start|>role\\n...<|im_end|>\\n, optional system message"
    required_tokens = (IM_START, IM_END)
    stop_strings = (IM_END,)
    after_end = "\n"

    def _turn_start(self, b: _Builder, role: str) -> None:
        b.token(b.tokenizer.token_to_id(IM_START))
        b.prompt(f"{role}\n")

    def _begin(self, b: _Builder, system: str | None) -> None:
        if system is not None:
            self._turn_start(b, "system")
            b.prompt(system)
            b.token(b.tokenizer.token_to_id(IM_END))
            b.prompt("\n")

    def _user(self, b: _Builder, content: str) -> None:
        self._turn_start(b, "user")
        b.prompt(content)
        b.token(b.tokenizer.token_to_id(IM_END))
        b.prompt("\n")

    def _assistant_prefix(self, b: _Builder) -> None:
        self._turn_start(b, "assistant")

    def _end_id(self, tokenizer: Tokenizer) -> int:
        return tokenizer.token_to_id(IM_END)


class VicunaTemplate(Template):
    """LLaVA-1.5 ``conv_vicuna_v1``. The generation prompt ends ``"ASSISTANT: "`` (LLaVA's ends
    ``"ASSISTANT:"``) so that it is the exact prefix of the training ids."""

    name = "vicuna"
    description = "LLaVA-1.5 v1 (Vicuna): system prompt, USER: ... ASSISTANT: ...</s>"
    stop_strings = ("</s>", "USER:")
    default_system = ("A chat between a curious human and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the human's questions.")

    def _begin(self, b: _Builder, system: str | None) -> None:
        if b.tokenizer.bos_id is not None:
            b.token(b.tokenizer.bos_id)
        system = self.default_system if system is None else system
        if system:
            b.prompt(system + " ")

    def _user(self, b: _Builder, content: str) -> None:
        b.prompt(f"USER: {content} ")

    def _assistant_prefix(self, b: _Builder) -> None:
        b.prompt("ASSISTANT: ")


TEMPLATES: dict[str, Template] = {t.name: t for t in (PlainTemplate(), ChatMLTemplate(), VicunaTemplate())}


def get_template(name: str) -> Template:
    """The template called `name`; an unknown name gets a did-you-mean and the list."""
    if not isinstance(name, str) or name not in TEMPLATES:
        raise TemplateError(unknown("template", name, TEMPLATES))
    return TEMPLATES[name]
