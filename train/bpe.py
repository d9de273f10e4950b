"""Train a small byte-level BPE tokenizer on a data set's text, for models trained from scratch.

Byte-level, so any text encodes (nothing is ever unknown); digits are always single tokens, so
numbers in answers ("3914") are read and written digit by digit as with bytes. A few hundred
merges turn a question such as "What digit is in row 2, column 3?" from 33 bytes into 12
tokens: shorter sequences train faster, and the words a question is made of become single
embeddings. Written as a ``tokenizer.json`` that `HFTokenizer` loads and checkpoints carry.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hybrid_mllm.core.text.tokenizer import IM_END, IM_START, IMAGE_TOKEN, VIDEO_TOKEN

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", IMAGE_TOKEN, VIDEO_TOKEN, IM_START, IM_END)
TEMPLATE_WORDS = ("system\n", "user\n", "assistant\n")  # what the chat templates write around turns
TEMPLATE_REPEATS = 1000  # often enough that their merges are learned whatever the corpus


def train_bpe(texts: Iterable[str], path: str | os.PathLike, *, vocab_size: int = 384) -> dict:
    """Learn merges from `texts` (placeholders and chat-template words are added), write
    ``tokenizer.json`` to `path` (atomically); returns the tokenizer spec a config's
    ``text.tokenizer`` takes (``path`` as given)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    placeholders = (IMAGE_TOKEN, VIDEO_TOKEN)
    corpus = (_without(text, placeholders) for text in texts)
    tokenizer.train_from_iterator(itertools.chain(TEMPLATE_WORDS * TEMPLATE_REPEATS, corpus), trainer)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, path)
    return {"type": "hf", "path": str(path), "eos_token": "</s>", "pad_token": "<pad>",
            "extra_special_tokens": [IM_START, IM_END]}


def _without(text: str, tokens: tuple[str, ...]) -> str:
    for token in tokens:
        text = text.replace(token, "")
    return text

