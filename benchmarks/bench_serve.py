"""hybrid-serve under load, on loopback: throughput and latency at 1 / 4 / 16 concurrent clients,
latency while a long prompt prefills beside them, a restart after SIGKILL, and the decode
batch's state per sequence at long context (hybrid against its attention-only twin).

    python benchmarks/bench_serve.py                       # mllm-tiny, random weights
    python benchmarks/bench_serve.py --requests 4 --long 8192 --context 8192   # a shorter run

Each level sends `--requests` x clients image + text chats (`ignore_eos`, `--max-tokens` each)
from that many concurrent streaming clients to a `hybrid-serve` process started here. Prints
requests/s, output tokens/s, p50 / p99 time to first token and inter-token latency, errors,
and writes serve-results.json and serve-results.png into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: str, port: int, *flags: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "hybrid_mllm.serve.cli", "--config", config, "--port", str(port),
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not come up: {proc.stdout.read()}")


def _image_url() -> str:
    buf = io.BytesIO()
    Image.effect_noise((96, 64), 60).convert("RGB").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def one_request(client: httpx.AsyncClient, body: dict) -> dict:
    """Stream one chat; returns its time to first token, token gaps and token count (or the error)."""
    t0 = time.perf_counter()
    stamps = []
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return {"error": response.status_code}
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        stamps.append(time.perf_counter())
    except httpx.HTTPError as e:
        return {"error": type(e).__name__}
    if not stamps:
        return {"error": "no tokens"}
    return {"ttft": stamps[0] - t0, "gaps": [b - a for a, b in zip(stamps, stamps[1:])], "chunks": len(stamps),
            "seconds": time.perf_counter() - t0}


async def load(url: str, model: str, clients: int, requests: int, max_tokens: int, image: str) -> dict:
    body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                      {"type": "text", "text": "Describe the picture."}]}]}
    queue = asyncio.Queue()
    for _ in range(requests):
        queue.put_nowait(body)
    results = []

    async def client_loop(client):
        while not queue.empty():
            results.append(await one_request(client, queue.get_nowait()))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*[client_loop(client) for _ in range(clients)])
    return summarize(results, time.perf_counter() - t0, max_tokens)


def summarize(results: list[dict], wall: float, max_tokens: int) -> dict:
    ok = [r for r in results if "error" not in r]
    ttft = sorted(r["ttft"] for r in ok)
    gaps = sorted(g for r in ok for g in r["gaps"])

    def pct(values, q):
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    return {"requests": len(results), "errors": len(results) - len(ok), "wall_s": wall,
            "requests_per_s": len(ok) / wall, "output_tokens_per_s": len(ok) * max_tokens / wall,
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99), "itl_p50_s": pct(gaps, 0.5),
            "itl_p99_s": pct(gaps, 0.99)}


async def with_long_prompt_beside(url: str, model: str, clients: int, max_tokens: int, image: str,
                                  long_tokens: int) -> dict:
    """The short chats' latency while one `long_tokens`-token text prompt prefills beside them."""
    long_body = {"model": model, "prompt": "x " * (long_tokens // 2), "max_tokens": 4, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=url, timeout=1200) as client:
        long_task = asyncio.create_task(client.post("/v1/completions", json=long_body))
        await asyncio.sleep(0.5)  # the long prompt is in and prefilling
        short = await load(url, model, clients, 2 * clients, max_tokens, image)
        long_reply = await long_task
    return {**short, "long_prompt_status": long_reply.status_code, "long_prompt_tokens": long_tokens}


def restart_after_kill(config: str, port: int, flags: list[str], proc: subprocess.Popen, image: str,
                       model: str) -> dict:
    """SIGKILL the server while 4 clients stream, start it again, and check that it serves."""
    async def strike():
        task = asyncio.create_task(load(f"http://127.0.0.1:{port}", model, 4, 8, 512, image))
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        return await task

    during = asyncio.run(strike())
    proc.wait()
    t0 = time.perf_counter()
    again = start_server(config, port, *flags)
    up = time.perf_counter() - t0
    after = asyncio.run(load(f"http://127.0.0.1:{port}", model, 1, 2, 8, image))
    return {"killed_requests_failed": during["errors"], "restart_s": up, "after_errors": after["errors"],
            "after_requests": after["requests"], "process": again}


@torch.no_grad()
def state_per_sequence(preset: str, context: int, batch: int) -> dict:
    """Decode-batch state bytes per sequence after `context` tokens, and ms per batched step."""
    from hybrid_mllm.core.build import build_model
    from hybrid_mllm.core.config import load_config
    from hybrid_mllm.core.presets import resolve_config_path
    from hybrid_mllm.serve.slots import join, state_specs

    lm = build_model(load_config(resolve_config_path(preset)), seed=0).eval()
    ids = torch.randint(0, 256, (1, context), generator=torch.Generator().manual_seed(0))
    state = lm.prefill(ids, chunk_size=2048).state
    per_sequence = sum(t.numel() * t.element_size() for layer in state for t in layer)
    batched = None
    for _ in range(batch):
        batched = join(batched, state, state_specs(lm))
    token = torch.zeros(batch, 1, dtype=torch.long)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        lm(token, state=batched)
        times.append(time.perf_counter() - t0)
    return {"preset": preset, "context": context, "state_bytes_per_sequence": per_sequence,
            "sequences_per_gb": 2**30 / per_sequence, "batch": batch, "step_ms": 1000 * statistics.median(times)}


def plot(levels: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [int(k) for k in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(clients, [levels[str(c)]["output_tokens_per_s"] for c in clients], marker="o")
    a.set(xscale="log", xlabel="concurrent clients", ylabel="output tokens / s", title="throughput")
    for key, label in (("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"), ("itl_p99_s", "inter-token p99")):
        b.plot(clients, [1000 * levels[str(c)][key] for c in clients], marker="o", label=label)
    b.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="latency")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="mllm-tiny", help="preset or YAML to serve (random weights)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per level")
    p.add_argument("--requests", type=int, default=3, help="requests per client at each level")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens each answer generates")
    p.add_argument("--long", type=int, default=32768, help="tokens of the long prompt prefilled beside the chats")
    p.add_argument("--context", type=int, default=32768, help="context of the state-per-sequence comparison")
    p.add_argument("--twin", default="attention-small", help="attention-only preset for the state comparison")
    p.add_argument("--hybrid", default="jamba-small", help="hybrid preset for the state comparison")
    p.add_argument("--out", default="benchmarks", help="folder for serve-results.json / .png")
    args = p.parse_args()
    port, image = _free_port(), _image_url()
    flags = ["--max-seqs", str(max(args.levels)), "--max-queue", "256", "--timeout", "1200"]
    proc = start_server(args.config, port, *flags)
    url = f"http://127.0.0.1:{port}"
    print(f"serving {args.config} on {url}; load: {os.getloadavg()}", flush=True)
    results = {"levels": {}, "load_before": os.getloadavg()}
    try:
        for clients in args.levels:
            r = asyncio.run(load(url, args.config, clients, clients * args.requests, args.max_tokens, image))
            results["levels"][str(clients)] = r
            print(f"{clients:3d} clients: {r['requests_per_s']:.2f} req/s, {r['output_tokens_per_s']:.1f} tok/s, "
                  f"TTFT p50/p99 {1000 * r['ttft_p50_s']:.0f}/{1000 * r['ttft_p99_s']:.0f} ms, inter-token "
                  f"p50/p99 {1000 * r['itl_p50_s']:.1f}/{1000 * r['itl_p99_s']:.1f} ms, errors {r['errors']}", flush=True)
        first, last = results["levels"][str(args.levels[0])], results["levels"][str(args.levels[-1])]
        print(f"throughput {args.levels[-1]} clients / {args.levels[0]}: "
              f"{last['output_tokens_per_s'] / first['output_tokens_per_s']:.2f}x")
        beside = asyncio.run(with_long_prompt_beside(url, args.config, 8, args.max_tokens, image, args.long))
        results["long_prompt_beside"] = beside
        print(f"8 clients beside a {args.long}-token prefill: TTFT p99 {1000 * beside['ttft_p99_s']:.0f} ms "
              f"(alone at 4 clients: {1000 * results['levels'].get('4', first)['ttft_p99_s']:.0f} ms), errors "
              f"{beside['errors']}, long prompt HTTP {beside['long_prompt_status']}", flush=True)
        restart = restart_after_kill(args.config, port, flags, proc, image, args.config)
        proc = restart.pop("process")
        results["restart"] = restart
        print(f"SIGKILL mid-load: {restart['killed_requests_failed']} requests in flight failed; restarted in "
              f"{restart['restart_s']:.1f} s and served {restart['after_requests'] - restart['after_errors']}/"
              f"{restart['after_requests']} after", flush=True)
    finally:
        proc.kill()
    results["state"] = [state_per_sequence(name, args.context, 16) for name in (args.hybrid, args.twin)]
    for s in results["state"]:
        print(f"{s['preset']}: {s['state_bytes_per_sequence'] / 2**20:.1f} MiB of state per sequence at "
              f"{s['context']} tokens ({s['sequences_per_gb']:.1f} sequences per GiB); decode step of 16 such "
              f"sequences {s['step_ms']:.1f} ms", flush=True)
    hybrid, twin = results["state"]
    print(f"sequences per GiB, hybrid / twin: {hybrid['sequences_per_gb'] / twin['sequences_per_gb']:.1f}x; "
          f"batched step, twin / hybrid time: {twin['step_ms'] / hybrid['step_ms']:.2f}x")
    out = Path(args.out)
    (out / "serve-results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results["levels"], out / "serve-results.png")


if __name__ == "__main__":
    main()
