"""LLaVA-format data: JSON / JSONL records -> token ids, labels and visual inputs.

A record: ``{"id", "image" | "images" | "video" | "videos", "conversations": [{"from":
"human" | "gpt", "value": "<image>\\n..."}]}``; file paths are relative to the data root and
may not leave it. Tokenisation uses the model's template, so the loss falls only on the
assistant's tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.paths import confined
from hybrid_mllm.core.text import Template, Tokenizer
from hybrid_mllm.core.vision import Visual
from hybrid_mllm.runtime.visual_inputs import VisualLoader


class DataError(HybridError):
    """A data file or record that cannot be used."""


@dataclass
class Record:
    id: str
    conversations: list[dict]
    images: list[str]
    videos: list[str]
    line: int  # 1-based line (JSONL) or item index (JSON array), for error messages


@dataclass
class Sample:
    ids: Tensor  # (L,) with one placeholder per visual item
    labels: Tensor  # (L,) IGNORE except on assistant tokens
    visuals: list[Visual]
    n_tokens: int  # text + visual tokens: the length the LM sees
    record_id: str


def read_records(path: str | Path, root: str | Path | None = None) -> list[Record]:
    """Parse a JSON array or JSONL file; every bad line is reported (first few) in one error."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"{path}: cannot read the data file ({e.strerror or e})") from None
    items = json_items(path, text)
    records, problems = [], []
    for line, item in items:
        try:
            records.append(_record(item, line, root))
        except DataError as e:
            problems.append(f"{path}:{line}: {e}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError("; ".join(problems[:5]) + more)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def json_items(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line or item number, parsed item) of a JSON array or JSONL text; blank lines skipped."""
    if text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
    return items


def _record(item: Any, line: int, root: Path) -> Record:
    if not isinstance(item, dict):
        raise DataError("a record must be a JSON object")
    conversations = item.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise DataError("missing 'conversations' (a list of {from, value} turns)")
    if not any(isinstance(t, dict) and t.get("from", t.get("role")) in ("gpt", "assistant") for t in conversations):
        raise DataError("the conversation has no assistant ('gpt') turn to learn from")
    images = _paths(item, "image", "images", root)
    videos = _paths(item, "video", "videos", root)
    text = " ".join(str(t.get("value", t.get("content", ""))) for t in conversations if isinstance(t, dict))
    if text.count("<image>") != len(images) or text.count("<video>") != len(videos):
        raise DataError(f"{text.count('<image>')} <image> and {text.count('<video>')} <video> tag(s) but "
                        f"{len(images)} image(s) and {len(videos)} video(s); put one tag in the text per file")
    return Record(str(item.get("id", line)), conversations, images, videos, line)


def _paths(item: dict, one: str, many: str, root: Path) -> list[str]:
    value = item.get(one, item.get(many, []))
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DataError(f"'{one}' must be a path or a list of paths")
    paths = [confined(root, v, where="the data root", error=DataError) for v in values]
    for value, full in zip(values, paths):
        if not full.exists():
            raise DataError(f"{one} '{value}' does not exist under the data root {root}; fix the path or the data root")
    return [str(p) for p in paths]


class LlavaDataset(torch.utils.data.Dataset):
    """Records rendered with the template; images and videos loaded when an item is read."""

    def __init__(self, records: list[Record], tokenizer: Tokenizer, template: Template, visuals: VisualLoader):
        self.records, self.tokenizer, self.template, self.visuals = records, tokenizer, template, visuals

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        try:
            rendered = self.template.render(record.conversations, self.tokenizer)
            items, n_visual = self.visuals.load(rendered.ids, record.images, record.videos)
        except HybridError as e:
            raise DataError(f"record '{record.id}' (line {record.line}): {e}") from None
        n_tokens = len(rendered.ids) - len(items) + n_visual
        return Sample(torch.tensor(rendered.ids), torch.tensor(rendered.labels), items, n_tokens, record.id)

    def text_length(self, index: int) -> int:
        """A cheap length estimate (characters of the conversation) for length-grouped batching."""
        record = self.records[index]
        return sum(len(str(t.get("value", ""))) for t in record.conversations) + 1000 * (len(record.images) + len(record.videos))

