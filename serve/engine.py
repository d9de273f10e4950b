"""Continuous batching: requests join and leave one running decode batch.

One engine thread owns the model. Each turn of its loop it takes in waiting requests (up to
`max_seqs` in flight), reads up to `prefill_chunk` prompt tokens shared among the requests still
reading their prompts (each gets an equal share, at least `MIN_SHARE`: a short prompt is read in
a turn or two even beside a 100k-token one, which goes on a share at a time), then runs one
decode step for every sequence in the batch, each sampled with its own settings. A sequence that finishes, is
cancelled (its client went away) or runs out of time leaves the batch before the next step.
Results go back to the asyncio side as events on each job's queue. The model runs through a
backend (`hybrid_mllm.serve.backends`: PyTorch, or an ONNX export in ONNX Runtime).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hybrid_mllm.core.text import Tokenizer
from hybrid_mllm.runtime.generate import GenerationConfig, sample_next

from .metrics import Metrics


MIN_SHARE = 64  # prompt tokens a reading request gets per turn at least


class QueueFull(Exception):
    """More requests are waiting than the server accepts (answered with a 429)."""


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # go on past the end-of-turn token (benchmarks: answers of a fixed length)


@dataclass
class Job:
    """One request in the engine: its prompt, settings and the queue its events go to.

    Events: ``("token", text)`` for each piece of new text, then ``("done", finish_reason)`` or
    ``("error", message)``.
    """

    ids: list[int]
    items: list
    n_visual: int
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    deadline: float | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)
    # engine side
    embeds: Tensor | None = None
    state: Any = None
    read: int = 0  # prompt positions prefilled
    tokens: list[int] = field(default_factory=list)
    sent: str = ""  # text sent so far
    generator: torch.Generator | None = None
    last_token_at: float | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids) - len(self.items) + self.n_visual

    def emit(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the server's event loop has closed: nobody is listening any more
            self.cancelled.set()


class Engine:
    """Owns a backend (`TorchBackend`, `OrtBackend`) and serves jobs from its own thread."""

    def __init__(self, backend, tokenizer: Tokenizer, stop_token_ids: tuple[int, ...], *, metrics: Metrics,
                 max_seqs: int = 16, max_queue: int = 64, prefill_chunk: int = 512):
        self.backend, self.tokenizer, self.metrics = backend, tokenizer, metrics
        self.stop_token_ids = stop_token_ids
        self.max_seqs, self.max_queue, self.prefill_chunk = max_seqs, max_queue, prefill_chunk
        self._waiting: deque[Job] = deque()
        self._reading: list[Job] = []  # prefilling
        self._batch: list[Job] = []  # decoding, in the order of the batch state's rows
        self._state = None
        self._wake = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="hybrid-serve-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify()
        self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (--max-queue {self.max_queue})")
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._wake.notify()

    @property
    def in_flight(self) -> int:
        return len(self._reading) + len(self._batch)

    # --- the loop ---------------------------------------------------------------------------

    def _serve(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while self._running and not (self._waiting or self._reading or self._batch):
                    self._wake.wait()
                if not self._running:
                    return
                self._admit()
            self._drop_finished()
            try:
                if self._reading:
                    share = max(MIN_SHARE, self.prefill_chunk // len(self._reading))
                    for job in list(self._reading):
                        self._prefill_chunk(job, share)
                if self._batch:
                    self._decode_step()
            except Exception as e:  # a bug must not kill the server: fail the jobs in flight, keep serving
                self._fail_all(f"internal error: {type(e).__name__}: {e}")

    def _admit(self) -> None:
        while self._waiting and self.in_flight < self.max_seqs:
            self._reading.append(self._waiting.popleft())
        self.metrics.queue_depth.set(len(self._waiting))
        self.metrics.active.set(self.in_flight)

    def _drop_finished(self) -> None:
        """Cancelled and timed-out jobs leave at once, freeing their slots."""
        now = time.perf_counter()
        for job in list(self._reading) + list(self._batch):
            if job.cancelled.is_set():
                self._finish(job, None)
            elif job.deadline is not None and now > job.deadline:
                job.emit("error", "the request ran past its time limit (--timeout)")
                self._finish(job, None)

    # --- prefill ----------------------------------------------------------------------------

    def _prefill_chunk(self, job: Job, tokens: int) -> None:
        """Read the next `tokens` of `job`'s prompt; after the last, sample its first token and
        add it to the decode batch."""
        if job.embeds is None:
            job.embeds = self.backend.embed(job.ids, job.items)  # (1, L, d)
            job.items = []  # encoded: the pixels are not needed any more
            job.generator = torch.Generator().manual_seed(job.sampling.seed) if job.sampling.seed is not None else None
        chunk = job.embeds[:, job.read:job.read + tokens]
        logits, job.state = self.backend.prefill(chunk, job.state)
        job.read += chunk.shape[1]
        if job.read < job.embeds.shape[1]:
            return
        self._reading.remove(job)
        self.metrics.time_to_first_token.observe(time.perf_counter() - job.created)
        if self._take(job, logits):
            self._state = self.backend.join(self._state, job.state)
            self._batch.append(job)
        job.state = job.embeds = None

    # --- decode -----------------------------------------------------------------------------

    def _decode_step(self) -> None:
        last = torch.tensor([[job.tokens[-1]] for job in self._batch])  # (B, 1)
        logits, self._state = self.backend.step(last, self._state)  # (B, V)
        staying = [row for row, job in enumerate(self._batch) if self._take(job, logits[row:row + 1])]
        if len(staying) < len(self._batch):
            self._batch = [self._batch[row] for row in staying]
            self._state = self.backend.keep(self._state, staying)

    def _take(self, job: Job, logits: Tensor) -> bool:
        """Sample `job`'s next token from logits (1, V); send its text; False when it ends here."""
        s = job.sampling
        config = GenerationConfig(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
        token = int(sample_next(logits, config, [job.tokens], job.generator)[0])
        now = time.perf_counter()
        if job.last_token_at is not None:
            self.metrics.inter_token_latency.observe(now - job.last_token_at)
        job.last_token_at = now
        if token in self.stop_token_ids and not s.ignore_eos:
            return self._finish(job, "stop")
        job.tokens.append(token)
        self.metrics.completion_tokens.inc()
        text = self.tokenizer.decode(job.tokens)
        cut = min((text.find(x) for x in s.stop if x in text), default=-1)
        if cut >= 0:
            self._send(job, text[:cut])
            return self._finish(job, "stop")
        if not text.endswith("\ufffd"):  # hold back a character whose bytes are not all out yet
            self._send(job, text)
        if len(job.tokens) >= s.max_tokens:
            self._send(job, text)
            return self._finish(job, "length")
        return True

    def _send(self, job: Job, text: str) -> None:
        if len(text) > len(job.sent) and text.startswith(job.sent):
            job.emit("token", text[len(job.sent):])
            job.sent = text

    def _finish(self, job: Job, reason: str | None) -> bool:
        """End `job` (reason None: it was cancelled or failed, already told); returns False."""
        if job in self._reading:
            self._reading.remove(job)
        if reason is not None:
            job.emit("done", reason)
        if job in self._batch and reason is None:  # left outside a step: drop its row now
            row = self._batch.index(job)
            self._batch.pop(row)
            self._state = self.backend.keep(self._state, [r for r in range(len(self._batch) + 1) if r != row])
        self.metrics.active.set(self.in_flight)
        return False

    def _fail_all(self, message: str) -> None:
        for job in list(self._reading) + list(self._batch):
            job.emit("error", message)
        self._reading, self._batch, self._state = [], [], None
