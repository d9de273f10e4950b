"""One request end to end: prompt + images / videos -> template -> visual tokens -> generation.

`Pipeline` holds a model, its tokenizer and config; `prepare` turns a request into a
batch (checking the context length and the visual-token cap before any encoding), and
`answer` generates through any runtime's `Decoder` (PyTorch by default, after checking
that its prefill fits in free memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hybrid_mllm.core.config import Config
from hybrid_mllm.core.errors import HybridError, InputError
from hybrid_mllm.core.text import IMAGE_TOKEN, VIDEO_TOKEN, Tokenizer, get_template
from hybrid_mllm.core.vision import Visual

from .alloc import keep_freed_memory
from .generate import Decoder, GenerationConfig, GenerationResult, TorchDecoder, generate
from .memory import check_prefill_memory
from .splice import Batch, Multimodal, embed
from .visual_budget import check_visual_budget
from .visual_inputs import Overrides, VisualLoader


@dataclass
class Request:
    """A user turn: text (with optional <image>/<video> placeholders) and the files they stand for."""

    prompt: str
    images: Sequence[str] = ()
    videos: Sequence[str] = ()


@dataclass
class Prepared:
    """A rendered prompt: ids (one placeholder id per visual item), the items, their token count."""

    ids: list[int]
    items: list[Visual]
    n_visual: int

    @property
    def tokens(self) -> int:
        """Tokens the LM reads: the text ids with each placeholder replaced by its item's tokens."""
        return len(self.ids) - len(self.items) + self.n_visual


PREFILL_CHUNK = 8192  # tokens per prefill step of the PyTorch runtime


class Pipeline:
    def __init__(self, model: Multimodal, tokenizer: Tokenizer, config: Config):
        keep_freed_memory()  # big freed activations stay in the heap for the next op (runtime/alloc.py)
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.template = get_template(config.text.template)
        self.visuals = VisualLoader(model, config.vision)

    def prepare(self, requests: Sequence[Request], overrides: Overrides | None = None) -> tuple[Batch, list[list[int]]]:
        """Render, load and encode a batch of requests. Returns the batch and each prompt's ids.

        A problem with one request names it (``request 2: ...``) when there are several.
        """
        overrides = overrides or Overrides()
        ids, visuals = [], []
        for i, request in enumerate(requests):
            try:
                item_ids, items = self._prepare_one(request, overrides)
            except HybridError as e:  # bad image, video, template or length: say which request
                if len(requests) == 1:
                    raise
                raise InputError(f"request {i + 1}: {e}") from None
            ids.append(item_ids)
            visuals.append(items)
        with torch.no_grad():
            batch = embed(self.model, [torch.tensor(x) for x in ids], visuals)
        return batch, ids

    def answer(self, requests: Sequence[Request], generation: GenerationConfig, *, overrides: Overrides | None = None,
               decoder: Decoder | None = None, on_token: Callable[[int, int], None] | None = None,
               prefill_chunk: int = PREFILL_CHUNK) -> tuple[GenerationResult, Batch]:
        """Generate the answers; without a `decoder`, PyTorch's, prefilling `prefill_chunk` tokens at a time."""
        batch, prompt_ids = self.prepare(requests, overrides)
        if decoder is None:
            check_prefill_memory(self.model.lm, *batch.mask.shape, prefill_chunk)
            decoder = TorchDecoder(self.model.lm, prefill_chunk=prefill_chunk)
        stops = tuple(dict.fromkeys([*generation.stop_token_ids, *self.template.stop_token_ids(self.tokenizer)]))
        generation = GenerationConfig(**{**generation.__dict__, "stop_token_ids": stops,
                                         "stop_strings": generation.stop_strings or tuple(self.template.stop_strings)})
        result = generate(decoder, batch.embeds, batch.mask, generation, decode=self.tokenizer.decode,
                          prompt_ids=prompt_ids, on_token=on_token)
        return result, batch

    def _prepare_one(self, request: Request, overrides: Overrides) -> tuple[list[int], list[Visual]]:
        messages = [{"role": "user", "content": _with_placeholders(request)}]
        prepared = self.prepare_chat(messages, request.images, request.videos, overrides)
        return prepared.ids, prepared.items

    def prepare_text(self, text: str) -> Prepared:
        """Plain text to continue (no chat template, no images) -> its ids, checked against the context."""
        ids = self.tokenizer.encode(text)
        if {self.tokenizer.image_id, self.tokenizer.video_id} & set(ids):
            raise InputError("a text completion takes text only: send images and videos as chat messages "
                             "(/v1/chat/completions)")
        if not ids or len(ids) > self.config.text.max_context:
            raise InputError(f"the prompt has {len(ids):,} tokens; it needs 1 to {self.config.text.max_context:,} "
                             "(the model's context)")
        return Prepared(ids, [], 0)

    def prepare_chat(self, messages: Sequence[dict], images: Sequence, videos: Sequence,
                     overrides: Overrides) -> Prepared:
        """A conversation (``{"role", "content"}`` messages, ending with the user's turn, with
        ``<image>`` / ``<video>`` placeholders in order) -> its prompt ids and visual items,
        checked against the visual-token cap and the context before any encoding. `images` /
        `videos`: what `load_image` / `load_video` take, one per placeholder."""
        if (images or videos) and not self.model.has_vision:
            raise InputError("this model has no vision encoder, so it cannot take images or videos")
        rendered = self.template.render(messages, self.tokenizer, add_generation_prompt=True)
        items, sizes = self.visuals.load_sized(rendered.ids, images, videos, overrides)
        given = overrides.max_visual_tokens is not None  # 0 is a limit, not "unset"
        limit = overrides.max_visual_tokens if given else self.config.text.max_visual_tokens
        if limit is not None:
            option = "--max-visual-tokens" if given else "text.max_visual_tokens"
            check_visual_budget(self.visuals, sizes, overrides, limit, option=option)
        n_visual = self.visuals.count(sizes, overrides)
        total = len(rendered.ids) - len(items) + n_visual
        if total > self.config.text.max_context:
            raise InputError(f"the prompt needs {total:,} tokens ({n_visual:,} visual) but the model's context is "
                             f"{self.config.text.max_context:,}: use fewer tiles (--max-tiles) or frames (--max-frames), "
                             f"or raise text.max_context")
        return Prepared(rendered.ids, items, n_visual)


def _with_placeholders(request: Request) -> str:
    """LLaVA's convention: without placeholders in the text, the images and videos come first."""
    n_img, n_vid = request.prompt.count(IMAGE_TOKEN), request.prompt.count(VIDEO_TOKEN)
    if (n_img, n_vid) == (0, 0):
        head = "".join(f"{IMAGE_TOKEN}\n" for _ in request.images) + "".join(f"{VIDEO_TOKEN}\n" for _ in request.videos)
        return head + request.prompt
    if (n_img, n_vid) != (len(request.images), len(request.videos)):
        raise InputError(f"the prompt has {n_img} {IMAGE_TOKEN} and {n_vid} {VIDEO_TOKEN} placeholder(s) but "
                         f"{len(request.images)} image(s) and {len(request.videos)} video(s) were given")
    return request.prompt
