"""hybrid-serve: the slot table against sequences decoded alone, and a real server on loopback
driven by the `openai` client (chat with images, streaming, completions, errors, limits,
disconnects, concurrency, metrics)."""

import asyncio
import base64
import io
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from hybrid_mllm.core.build import build_model  # noqa: E402
from hybrid_mllm.core.config import load_config  # noqa: E402
from hybrid_mllm.core.presets import resolve_config_path  # noqa: E402
from hybrid_mllm.serve.cli import _parser, build_app  # noqa: E402
from hybrid_mllm.serve.slots import join, keep, state_specs  # noqa: E402

MODEL = "mllm-tiny"


# --- the slot table ---------------------------------------------------------------------------------

@torch.no_grad()
def test_sequences_joining_and_leaving_a_batch_decode_as_if_alone():
    """Three prompts of different lengths prefilled apart, decoded together through the slot table
    (one leaves after two steps): every step's logits equal each sequence decoded alone."""
    lm = build_model(load_config(resolve_config_path("hybrid-tiny")), seed=0).eval()
    specs = state_specs(lm)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (1, n), generator=g) for n in (5, 11, 8)]
    steps = torch.randint(0, 256, (3, 4), generator=g)  # the token each sequence reads at each step
    alone = []
    for i, prompt in enumerate(prompts):
        state, logits = lm(prompt).state, []
        for t in range(4):
            out = lm(steps[i, t].view(1, 1), state=state)
            state = out.state
            logits.append(out.logits[0, -1])
        alone.append(logits)
    batch, rows = None, [0, 1, 2]
    for prompt in prompts:
        batch = join(batch, lm(prompt).state, specs)
    for t in range(4):
        if t == 2:  # sequence 1 leaves
            batch, rows = keep(batch, [0, 2]), [0, 2]
        out = lm(steps[rows, t].view(-1, 1), state=batch)
        batch = out.state
        for r, i in enumerate(rows):
            torch.testing.assert_close(out.logits[r, -1], alone[i][t], atol=2e-5, rtol=2e-5)
    assert keep(batch, []) is None


# --- a server on loopback ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`hybrid-serve` in a thread of this process, on a free loopback port."""

    def __init__(self, *flags: str, source: tuple[str, str] = ("--config", MODEL)):
        self.port = _free_port()
        self.app = build_app(_parser().parse_args([*source, "--port", str(self.port), *flags]))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def engine(self):
        return self.app.state.served.engine


@pytest.fixture(scope="module")
def server():
    s = Server("--max-seqs", "4", "--max-tokens", "8")
    yield s
    s.stop()


def _png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def _image_chat(text="What colour is it?", url=None) -> list[dict]:
    return [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url or _data_url(_png())}},
                                         {"type": "text", "text": text}]}]


def test_models_health_and_metrics(server):
    assert [m.id for m in server.client.models.list()] == [MODEL]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    server.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("hybrid_requests_total", "hybrid_completion_tokens_total", "hybrid_queue_depth",
                 "hybrid_time_to_first_token_seconds_bucket", "hybrid_inter_token_latency_seconds_bucket"):
        assert name in metrics, name


def test_chat_with_an_image_answers_with_usage_and_visual_tokens(server):
    reply = server.client.chat.completions.create(model=MODEL, messages=_image_chat(), max_tokens=6, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.completion_tokens <= 6 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.model_extra["visual_tokens"] > 0 and usage.prompt_tokens > usage.model_extra["visual_tokens"]


def test_streaming_gives_the_same_text_as_one_answer(server):
    kwargs = {"model": MODEL, "messages": _image_chat(), "max_tokens": 6, "temperature": 0}
    whole = server.client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(server.client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_several_images_multi_turn_and_video_frames(server):
    frames = [{"url": _data_url(_png((i * 40, 0, 0), (32, 32)))} for i in range(3)]
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(_png())}},
                                             {"type": "image_url", "image_url": {"url": _data_url(_png((0, 0, 200)))}},
                                             {"type": "text", "text": "Compare them."}]},
                {"role": "assistant", "content": "They differ."},
                {"role": "user", "content": [{"type": "video_frames", "video_frames": frames},
                                             {"type": "text", "text": "And this clip?"}]}]
    reply = server.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    one_image = server.client.chat.completions.create(model=MODEL, messages=_image_chat(), max_tokens=4)
    assert reply.usage.model_extra["visual_tokens"] > 2 * one_image.usage.model_extra["visual_tokens"]


def test_text_completion(server):
    reply = server.client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert reply.object == "text_completion" and reply.usage.completion_tokens <= 5
    streamed = "".join(c.choices[0].text for c in server.client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == reply.choices[0].text


@pytest.mark.parametrize("body, status, param, words", [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 400, "model", "not served here"),
    ({"model": MODEL, "messages": []}, 400, "messages", "at least 1"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature",
     "valid number"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n", "1"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400,
     "messages.0.content.0.image_url.url", "not an image"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, 400,
     "messages.0.content.0.image_url.url", "never fetched"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}, 400,
     "messages.0.content.0.image_url.url", "--allowed-media-dir"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}]}]}, 400,
     "messages.0.content.0.image_url.url", "image/png"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x " * 100_001}]}, 400, "messages", "context"),
])
def test_bad_requests_get_a_400_naming_the_field(server, body, status, param, words):
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    error = response.json()["error"]
    assert response.status_code == status and error["param"] == param and words in error["message"], error


def test_bad_json_and_a_too_large_body(server):
    response = httpx.post(server.url + "/v1/chat/completions", content=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    big = httpx.post(server.url + "/v1/chat/completions", content=b" " * (33 * 2**20),
                     headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert httpx.get(server.url + "/health").status_code == 200  # still serving


def test_the_openai_client_sees_errors_as_its_own_exceptions(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "model"


def test_concurrent_requests_decode_together_and_match_answers_alone(server):
    """Requests of different lengths in flight at once give the answers each gives alone (greedy)."""
    prompts = [f"Question number {i}: " + "tell me more " * i for i in range(6)]
    alone = [server.client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0).choices[0].text
             for p in prompts]

    async def together():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        replies = await asyncio.gather(*[client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0)
                                         for p in prompts])
        return [r.choices[0].text for r in replies]

    assert asyncio.run(together()) == alone


def test_a_client_that_goes_away_frees_its_slot_at_once(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 100000, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        deadline = time.time() + 10
        while server.engine.in_flight == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert server.engine.in_flight == 1
    deadline = time.time() + 10
    while server.engine.in_flight and time.time() < deadline:
        time.sleep(0.01)
    assert server.engine.in_flight == 0


def test_a_full_queue_answers_429_and_a_slow_request_times_out():
    s = Server("--max-seqs", "1", "--max-queue", "1", "--timeout", "1.5")
    try:
        long = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 100000,
                "ignore_eos": True}

        async def flood():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                return await asyncio.gather(*[client.post("/v1/chat/completions", json=long) for _ in range(4)])

        statuses = sorted(r.status_code for r in asyncio.run(flood()))
        assert 429 in statuses and 504 in statuses, statuses
        assert all(code in (429, 504) for code in statuses)
        assert httpx.get(s.url + "/health").json()["in_flight"] == 0
    finally:
        s.stop()


def test_local_media_only_under_the_allowed_folder(tmp_path):
    allowed = tmp_path / "media"
    allowed.mkdir()
    (allowed / "red.png").write_bytes(_png())
    (tmp_path / "secret.png").write_bytes(_png())
    s = Server("--allowed-media-dir", str(allowed))
    try:
        ok = s.client.chat.completions.create(model=MODEL, messages=_image_chat(url=str(allowed / "red.png")),
                                              max_tokens=2)
        assert ok.usage.model_extra["visual_tokens"] > 0
        for url in (str(allowed / ".." / "secret.png"), f"file://{tmp_path / 'secret.png'}"):
            with pytest.raises(openai.BadRequestError, match="outside the allowed media folder"):
                s.client.chat.completions.create(model=MODEL, messages=_image_chat(url=url), max_tokens=2)
    finally:
        s.stop()


# --- the chat page in a real browser ----------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
def test_chat_page_uploads_an_image_and_shows_the_streamed_answer(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "red.png"
    image.write_bytes(_png())
    expected = server.client.chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _data_url(image.read_bytes())}},
            {"type": "text", "text": "What is this?"}]}]).choices[0].message.content
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('mllm-tiny')")
            page.set_input_files("#images", str(image))
            page.fill("#prompt", "What is this?")
            page.click("#send")
            page.wait_for_selector("#answer-1[data-done='true']", timeout=30000)
            answer = page.text_content("#answer-1")
            stats = page.text_content("#stats")
        finally:
            browser.close()
    assert answer == "model: " + expected
    assert "tokens/s" in stats and "tokens" in stats


# --- the ONNX Runtime backend -----------------------------------------------------------------------

def test_an_onnx_export_serves_batched_answers_equal_to_pytorch(tmp_path):
    """hybrid-serve --onnx: concurrent greedy answers (sequences joining one ONNX Runtime batch)
    equal the PyTorch server's for the same checkpoint."""
    pytest.importorskip("onnxruntime")
    from hybrid_mllm.core.build import build_mllm
    from hybrid_mllm.core.checkpoint import save_checkpoint
    from hybrid_mllm.export import cli_export

    config = load_config(resolve_config_path(MODEL))
    model, tokenizer = build_mllm(config, seed=0)
    save_checkpoint(model, config, tmp_path / "ckpt", tokenizer=tokenizer)
    assert cli_export.main(["--onnx", str(tmp_path / "ckpt"), str(tmp_path / "onnx")]) == 0
    prompts = [f"Question {i}: " + "more " * i for i in range(4)]

    async def answers(url: str) -> list[str]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        replies = await asyncio.gather(*[client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0)
                                         for p in prompts])
        return [r.choices[0].text for r in replies]

    results = {}
    for flag, folder in (("--checkpoint", "ckpt"), ("--onnx", "onnx")):
        s = Server(source=(flag, str(tmp_path / folder)))
        try:
            results[flag] = asyncio.run(answers(s.url))
        finally:
            s.stop()
    assert results["--onnx"] == results["--checkpoint"]
