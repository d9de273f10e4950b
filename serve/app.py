"""The OpenAI-compatible HTTP API (FastAPI): models, chat and text completions, health, metrics,
and the chat page at ``/``.

Every failure a client can cause is a 4xx with OpenAI's error body naming the field; nothing a
request holds takes the server down. Generation runs in the `Engine`'s thread; this side
renders and checks the prompt (in a worker thread: images decode there), submits the job and
relays its events, as one JSON answer or as server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from tempfile import TemporaryDirectory

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.vision.image import DEFAULT_MAX_PIXELS
from hybrid_mllm.runtime.pipeline import Pipeline
from hybrid_mllm.runtime.visual_inputs import Overrides

from .engine import Engine, Job, QueueFull, Sampling
from .media import MediaError, image_source, video_source
from .metrics import Metrics
from .schemas import ChatRequest, CompletionRequest, Message, _Sampling, error_body


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 * 2**20
    max_visual_tokens: int | None = None
    default_max_tokens: int = 512
    timeout_s: float | None = 300.0
    allowed_media_dir: Path | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind


def create_app(pipeline: Pipeline, engine: Engine, metrics: Metrics, *, model_name: str, limits: Limits) -> FastAPI:
    """The app; its engine thread runs while the app does (started and stopped by its lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="hybrid-serve", summary="an OpenAI-compatible API for a hybrid MLLM", lifespan=lifespan)
    served = _Served(pipeline, engine, metrics, model_name, limits)
    app.state.served = served
    _handlers(app, metrics)

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            return _error(413, f"request body of {int(size):,} bytes is over the limit of "
                               f"{limits.max_body_bytes:,} (--max-body-mb)", code="body_too_large")
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> str:
        return files("hybrid_mllm.serve").joinpath("static/index.html").read_text()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "in_flight": engine.in_flight}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": served.started,
                                            "owned_by": "hybrid-mllm"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await served.answer(body, request, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await served.answer(body, request, chat=False)

    return app


def _handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        if first["type"] == "json_invalid":
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        elif param is None:
            message = f"the body must be a JSON object (Content-Type: application/json): {first['msg']}"
        else:
            message = f"{param}: {first['msg']}"
        metrics.requests.labels(request.url.path, "400").inc()
        return _error(400, message, param=param)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return _error(exc.status, str(exc), param=exc.param, code=exc.code, kind=exc.kind)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug: answered, logged by uvicorn, server stays up
        metrics.requests.labels(request.url.path, "500").inc()
        return _error(500, f"internal error: {type(exc).__name__}", kind="server_error")


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(error_body(message, kind=kind, param=param, code=code), status_code=status)


class _Served:
    """What the endpoints share: the pipeline (rendering, media checks), the engine, the limits."""

    def __init__(self, pipeline: Pipeline, engine: Engine, metrics: Metrics, model_name: str, limits: Limits):
        self.pipeline, self.engine, self.metrics, self.model_name, self.limits = pipeline, engine, metrics, \
            model_name, limits
        self.started = int(time.time())

    async def answer(self, body: _Sampling, request: Request, *, chat: bool):
        if body.model != self.model_name:
            raise ApiError(400, f"model: '{body.model}' is not served here; this server serves '{self.model_name}' "
                                "(GET /v1/models)", param="model", code="model_not_found")
        with TemporaryDirectory(prefix="hybrid-serve-") as scratch:
            prepared = await asyncio.to_thread(self._prepare, body, chat, Path(scratch))
        max_tokens = (body.max_tokens or body.max_completion_tokens or self.limits.default_max_tokens) if chat \
            else body.max_tokens
        room = self.pipeline.config.text.max_context - prepared.tokens
        if room < 1:
            raise ApiError(400, f"the prompt fills the model's context of {self.pipeline.config.text.max_context:,} "
                                "tokens; shorten it", param="messages" if chat else "prompt", code="context_length_exceeded")
        sampling = Sampling(min(max_tokens, room), body.temperature, body.top_p, body.top_k, body.stops(), body.seed,
                            body.ignore_eos)
        deadline = time.perf_counter() + self.limits.timeout_s if self.limits.timeout_s else None
        job = Job(prepared.ids, prepared.items, prepared.n_visual, sampling, asyncio.get_running_loop(), deadline)
        try:
            self.engine.submit(job)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}; retry later", code="queue_full", kind="rate_limit_error") from None
        self.metrics.prompt_tokens.inc(job.prompt_tokens)
        self.metrics.visual_tokens.inc(job.n_visual)
        reply = _Reply(job, self.model_name, chat, body)
        endpoint = request.url.path
        if body.stream:
            self.metrics.requests.labels(endpoint, "200").inc()
            return StreamingResponse(reply.stream(), media_type="text/event-stream")
        try:
            result = await reply.collect()
        finally:
            job.cancelled.set()  # no-op when done; frees the slot when this handler was cancelled
        self.metrics.requests.labels(endpoint, "200").inc()
        return result

    def _prepare(self, body: _Sampling, chat: bool, scratch: Path):
        overrides = Overrides(max_visual_tokens=self.limits.max_visual_tokens)
        try:
            if chat:
                vision = self.pipeline.config.vision
                max_pixels = vision.max_pixels if vision is not None else DEFAULT_MAX_PIXELS
                messages, images, videos = _conversation(body.messages, self.limits.allowed_media_dir, max_pixels,
                                                         scratch)
                return self.pipeline.prepare_chat(messages, images, videos, overrides)
            prompt = _one_prompt(body.prompt)
            return self.pipeline.prepare_text(prompt)
        except MediaError as e:
            raise ApiError(400, str(e), param=e.param) from None
        except HybridError as e:  # an image that does not decode, too many visual tokens, too long a prompt
            raise ApiError(400, str(e), param="messages" if chat else "prompt") from None


def _one_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise ApiError(400, f"prompt: {len(prompt)} prompts in one request; send one (batching is the server's job)",
                       param="prompt")
    return prompt[0]


def _conversation(messages: list[Message], allowed: Path | None, max_pixels: int,
                  scratch: Path) -> tuple[list[dict], list, list]:
    """OpenAI messages -> the template's messages with ``<image>`` / ``<video>`` placeholders, and
    the images and videos they stand for, in order."""
    out, images, videos = [], [], []
    for i, message in enumerate(messages):
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        pieces = []
        for j, part in enumerate(message.content):
            param = f"messages.{i}.content.{j}"
            if part.type != "text" and message.role != "user":
                raise ApiError(400, f"{param}: only user messages may hold images or videos", param=param)
            if part.type == "text":
                pieces.append(part.text)
            elif part.type == "image_url":
                images.append(image_source(part.image_url.url, f"{param}.image_url.url", allowed, max_pixels))
                pieces.append("<image>")
            elif part.type == "video_url":
                videos.append(video_source(part.video_url.url, f"{param}.video_url.url", allowed, scratch))
                pieces.append("<video>")
            else:
                videos.append([image_source(u.url, f"{param}.video_frames.{k}.url", allowed, max_pixels)
                               for k, u in enumerate(part.video_frames)])
                pieces.append("<video>")
        out.append({"role": message.role, "content": "\n".join(pieces)})
    return out, images, videos


class _Reply:
    """Relays one job's events as an OpenAI response: collected, or streamed as SSE chunks."""

    def __init__(self, job: Job, model: str, chat: bool, body: _Sampling):
        self.job, self.model, self.chat = job, model, chat
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def usage(self) -> dict:
        completion = len(self.job.tokens)
        return {"prompt_tokens": self.job.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.job.prompt_tokens + completion, "visual_tokens": self.job.n_visual}

    async def events(self) -> AsyncIterator[tuple]:
        while True:
            event = await self.job.events.get()
            yield event
            if event[0] in ("done", "error"):
                return

    async def collect(self) -> dict:
        text, reason = [], None
        async for event in self.events():
            if event[0] == "token":
                text.append(event[1])
            elif event[0] == "error":
                raise ApiError(504 if "time limit" in event[1] else 500, event[1], code="timeout"
                               if "time limit" in event[1] else None, kind="server_error")
            else:
                reason = event[1]
        choice = {"index": 0, "finish_reason": reason, "logprobs": None}
        choice |= {"message": {"role": "assistant", "content": "".join(text)}} if self.chat else {"text": "".join(text)}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage()}

    async def stream(self) -> AsyncIterator[str]:
        try:
            if self.chat:
                yield self._chunk({"role": "assistant", "content": ""}, None)
            async for event in self.events():
                if event[0] == "token":
                    yield self._chunk({"content": event[1]} if self.chat else event[1], None)
                elif event[0] == "error":
                    yield f"data: {json.dumps(error_body(event[1], kind='server_error'))}\n\n"
                else:
                    yield self._chunk({} if self.chat else "", event[1])
            if self.include_usage:
                yield f"data: {json.dumps(self._envelope([]) | {'usage': self.usage()})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.job.cancelled.set()  # the client went away (or the stream ended): free the slot

    def _chunk(self, delta, reason: str | None) -> str:
        choice = {"index": 0, "finish_reason": reason, "logprobs": None}
        choice |= {"delta": delta} if self.chat else {"text": delta}
        return f"data: {json.dumps(self._envelope([choice]))}\n\n"

    def _envelope(self, choices: list) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices}
