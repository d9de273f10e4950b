"""Evaluate a model on LLaVA-format QA data: generate an answer per record and score it."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from hybrid_mllm.runtime.generate import GenerationConfig
from hybrid_mllm.runtime.pipeline import PREFILL_CHUNK, Pipeline, Request
from hybrid_mllm.runtime.visual_inputs import Overrides

from .data import DataError, Record
from .metrics import anls, exact_match


def first_question(record: Record) -> tuple[str, str]:
    """The first user turn and the answer that follows it."""
    turns = [(t.get("from", t.get("role")), str(t.get("value", t.get("content", "")))) for t in record.conversations]
    for (role, text), (next_role, answer) in zip(turns, turns[1:]):
        if role in ("human", "user") and next_role in ("gpt", "assistant"):
            return text, answer
    raise DataError(f"record '{record.id}' (line {record.line}): no human turn followed by a gpt answer to score; "
                    "put the question before the answer")


def evaluate(pipeline: Pipeline, records: list[Record], raw: list[dict], *, overrides: Overrides,
             batch_size: int = 8, max_new_tokens: int = 16, progress: bool = True,
             prefill_chunk: int = PREFILL_CHUNK) -> tuple[list[dict], dict]:
    """Returns per-sample rows and a summary: scores overall and per question type ``qtype``,
    the seconds in all, and of them ``prefill_seconds`` and ``decode_seconds`` in the language
    model (over ``decode_steps`` batched decoding steps)."""
    rows, t0, lm = [], time.perf_counter(), {"prefill_seconds": 0.0, "decode_seconds": 0.0, "decode_steps": 0}
    generation = GenerationConfig(max_new_tokens=max_new_tokens)
    all_questions = [first_question(r) for r in records]  # a record without one fails before any work
    for start in tqdm(range(0, len(records), batch_size), desc="eval", disable=not progress):
        chunk = records[start:start + batch_size]
        questions = all_questions[start:start + batch_size]
        requests = [Request(q, images=r.images, videos=r.videos) for r, (q, _) in zip(chunk, questions)]
        result, batch = pipeline.answer(requests, generation, overrides=overrides, prefill_chunk=prefill_chunk)
        lm["prefill_seconds"] += result.prefill_s
        lm["decode_seconds"] += result.decode_s
        lm["decode_steps"] += result.steps
        for i, (record, (question, answer)) in enumerate(zip(chunk, questions)):
            prediction = result.texts[i].strip()
            rows.append({"id": record.id, "qtype": raw[start + i].get("qtype", "all"), "question": question,
                         "answer": answer, "prediction": prediction, "exact_match": exact_match(prediction, [answer]),
                         "anls": anls(prediction, [answer]), "visual_tokens": batch.n_visual[i]})
    return rows, {**summarize(rows, time.perf_counter() - t0), **lm}


def summarize(rows: list[dict], seconds: float) -> dict:
    """Scores overall and per ``qtype``, and the `seconds` they took."""
    by_type = defaultdict(list)
    for row in rows:
        by_type[row["qtype"]].append(row)
    def score(items):  # noqa: E306
        n = len(items)
        return {"n": n, "exact_match": sum(r["exact_match"] for r in items) / n, "anls": sum(r["anls"] for r in items) / n,
                "mean_visual_tokens": sum(r["visual_tokens"] for r in items) / n}
    return {"overall": score(rows), "by_type": {k: score(v) for k, v in sorted(by_type.items())}, "seconds": seconds}


def write_results(out_dir: Path, rows: list[dict], summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
