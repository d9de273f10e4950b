"""Request bodies of the OpenAI API that the server takes (pydantic models), and its error body.

Fields OpenAI defines and this server does not use (``user``, ``logprobs`` ...) are accepted
and ignored, as OpenAI-compatible servers do; ones it cannot honour (``n`` > 1) are refused.
Media parts beyond OpenAI's: ``video_url`` (a data: URL of a video file, as vLLM takes it) and
``video_frames`` (a list of image URLs, one per frame).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class URL(_Body):
    url: str


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: URL


class VideoPart(_Body):
    type: Literal["video_url"]
    video_url: URL


class FramesPart(_Body):
    type: Literal["video_frames"]
    video_frames: list[URL] = Field(min_length=1)


Part = Annotated[TextPart | ImagePart | VideoPart | FramesPart, Field(discriminator="type")]


class Message(_Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # an extension (vLLM's), 0 = off
    ignore_eos: bool = False  # an extension (vLLM's): generate max_tokens whatever the model says
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for completions


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
