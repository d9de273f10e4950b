"""CPU prefill and decode against llama.cpp on the same random Jamba weights (f32 and bf16).

The peer is llama-cpp-python built from source (an optional benchmark dependency only):

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-binary llama-cpp-python llama-cpp-python
    pip download --no-binary :all: --no-deps llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz

``_peer_models.py`` builds each size once as Hugging Face, GGUF (llama.cpp's own
converter, from the unpacked sdist's ``vendor/llama.cpp``) and our checkpoint
(``hybrid-convert``). fp32 parity comes first: logits of a 64-token prompt against
transformers, and 16 greedy tokens ours vs llama.cpp. Then, per context, prefill of the
prompt and ``--decode`` single-token steps after it, rounds alternating ours / llama.cpp,
``--threads`` threads each; a row gives the medians of ``--repeats`` rounds and their ratio.
Each engine runs in a worker process of its own (its own OpenMP runtime): ours as
``hybrid-run`` runs it (its OpenMP wait policy where this version sets one,
``load_checkpoint(dtype=...)``, ``TorchDecoder``, the runtime's prefill chunk, malloc
settings and weights on huge pages), llama.cpp through ``Llama.eval`` with an f32 KV cache
for f32 and bf16 for bf16 and ``--peer-omp-wait`` as its ``OMP_WAIT_POLICY``.

    python benchmarks/bench_llama_cpp.py --llama-cpp /tmp/llama_cpp_python-0.3.36/vendor/llama.cpp
    python benchmarks/bench_llama_cpp.py --llama-cpp DIR --sizes large --contexts 512 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _peer_models  # this folder's helper, not a package

KV_TYPES = {"float32": 0, "bfloat16": 30}  # ggml.h: GGML_TYPE_F32, GGML_TYPE_BF16


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-cpp", help="llama.cpp sources with convert_hf_to_gguf.py (default: $LLAMA_CPP_DIR)")
    p.add_argument("--sizes", nargs="+", choices=list(_peer_models.SIZES), default=["small"])
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 8192], help="prompt lengths")
    p.add_argument("--dtypes", nargs="+", choices=list(KV_TYPES), default=list(KV_TYPES))
    p.add_argument("--decode", type=int, default=32, help="single-token steps timed after each prefill (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per row, medians reported (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-omp-wait", default="PASSIVE",
                   help="OMP_WAIT_POLICY of llama.cpp's process (default PASSIVE, what hybrid-run sets for ours; "
                        "'native': leave it unset, as llama.cpp's own CLI does)")
    p.add_argument("--flash-attn", action="store_true", help="llama.cpp's flash attention (default off: exact f32)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_llama_cpp"), help="models, kept between runs")
    p.add_argument("--rebuild", action="store_true", help="rebuild the models in --workdir")
    p.add_argument("--json-out", type=Path, help="also write the rows as JSON")
    p.add_argument("--worker", choices=["ours", "llama.cpp"], help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--n-ctx", type=int, help=argparse.SUPPRESS)
    return p


class Ours:
    """Our runtime as hybrid-run uses it: the checkpoint at a dtype, TorchDecoder's prefill and step."""

    def __init__(self, path: Path, dtype: str):
        import torch

        from hybrid_mllm.core.checkpoint import load_checkpoint
        from hybrid_mllm.runtime.alloc import keep_freed_memory
        from hybrid_mllm.runtime.generate import TorchDecoder
        from hybrid_mllm.runtime.pipeline import PREFILL_CHUNK

        self.malloc = keep_freed_memory()
        self.lm = load_checkpoint(path, dtype=getattr(torch, dtype)).model.lm.eval()
        try:  # hybrid-run's placement of the weights, where this version has it
            from hybrid_mllm.runtime.huge_pages import weights_on_huge_pages
            self.pages = weights_on_huge_pages(self.lm)
        except ImportError:
            self.pages = "malloc's"
        self.decoder = TorchDecoder(self.lm, prefill_chunk=PREFILL_CHUNK)
        self.state = None

    def prefill(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.tensor([ids])
            logits, self.state = self.decoder.prefill(self.lm.embed(x), torch.ones_like(x, dtype=torch.bool))
        return logits[0].float().numpy()

    def step(self, token: int) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits, self.state = self.decoder.step(torch.tensor([[token]]), self.state)
        return logits[0].float().numpy()


class Peer:
    """llama.cpp through llama-cpp-python: one context, memory cleared before each prefill."""

    def __init__(self, path: Path, dtype: str, n_ctx: int, threads: int, flash_attn: bool, logits_all=False):
        import llama_cpp

        self.logits_ith = llama_cpp.llama_get_logits_ith
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=2048, n_ubatch=512, n_threads=threads,
                                   n_threads_batch=threads, type_k=KV_TYPES[dtype], type_v=KV_TYPES[dtype],
                                   flash_attn=flash_attn, logits_all=logits_all, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _last(self) -> np.ndarray:
        last = self.logits_ith(self.llm._ctx.ctx, -1)  # the last token's row, with or without logits_all
        return np.ctypeslib.as_array(last, shape=(self.n_vocab,)).copy()

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()  # clears the KV cache and the recurrent states
        self.llm.eval(ids)
        return self._last()

    def step(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._last()


def _greedy(engine, ids: list[int], n: int) -> list[int]:
    out, logits = [], engine.prefill(ids)
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = engine.step(out[-1])
    return out


class Remote:
    """One engine in a process of its own (its own OpenMP runtime and environment, as its own
    command line would have), driven over stdin / stdout one JSON line at a time."""

    def __init__(self, kind: str, model: Path, dtype: str, n_ctx: int, args):
        cmd = [sys.executable, __file__, "--worker", kind, "--model", str(model), "--dtype", dtype,
               "--n-ctx", str(n_ctx), "--threads", str(args.threads)] + ["--flash-attn"] * args.flash_attn
        env = dict(os.environ)
        if kind == "llama.cpp" and args.peer_omp_wait != "native":  # the same OpenMP waiting as ours
            env["OMP_WAIT_POLICY"] = args.peer_omp_wait
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"the benchmark's worker died (exit {self.proc.wait()}): see its output above")
        return json.loads(line)

    def call(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _worker(args) -> None:
    """Serve timing and greedy requests for one engine until stdin closes."""
    if args.worker == "ours":
        try:  # hybrid-run's thread settings, where this version has them (before torch loads)
            from hybrid_mllm.core.openmp import prefer_passive_wait
            prefer_passive_wait()
        except ImportError:
            pass
        import torch

        torch.set_num_threads(args.threads)
        engine = Ours(args.model, args.dtype)
        info = {"malloc": engine.malloc, "weights": engine.pages, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    else:
        engine = Peer(args.model, args.dtype, args.n_ctx, args.threads, args.flash_attn)
        info = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if "greedy" in req:
            reply = {"tokens": _greedy(engine, req["greedy"], req["n"])}
        else:
            reply = dict(zip(("prefill_s", "decode_s"), _timed(engine, req["prompt"], req["steps"]), strict=True))
        print(json.dumps(reply), flush=True)


def parity(forms, args) -> dict:
    """fp32: logits over a 64-token prompt vs transformers (in this process); 16 greedy tokens
    of the two engines as they are timed (in their workers)."""
    import torch
    import transformers

    hf = transformers.JambaForCausalLM.from_pretrained(forms.hf).eval()
    ids = torch.randint(3, hf.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1))
    ours, peer = Ours(forms.ours, "float32"), Peer(forms.gguf["float32"], "float32", 256, args.threads,
                                                   args.flash_attn, logits_all=True)
    with torch.inference_mode():
        ref = hf(ids, use_cache=False).logits[0].numpy()
        mine = ours.lm(ids).logits[0].numpy()
    peer.llm.reset()
    peer.llm.eval(ids[0].tolist())
    theirs = np.array(peer.llm.scores[:64])
    del hf, ours, peer
    greedy = []
    for kind, model in (("ours", forms.ours), ("llama.cpp", forms.gguf["float32"])):
        worker = Remote(kind, model, "float32", 256, args)
        greedy.append(worker.call(greedy=ids[0].tolist(), n=16)["tokens"])
        worker.close()
    return {"ours_vs_transformers": float(np.abs(mine - ref).max()),
            "llama_cpp_vs_transformers": float(np.abs(theirs - ref).max()),
            "logit_scale": float(np.abs(ref).max()), "greedy_match": sum(x == y for x, y in zip(*greedy))}


def _timed(engine, prompt: list[int], steps: list[int]) -> tuple[float, float]:
    t0 = time.perf_counter()
    engine.prefill(prompt)
    t1 = time.perf_counter()
    for tok in steps:
        engine.step(tok)
    return t1 - t0, time.perf_counter() - t1


def measure(forms, size: str, dtype: str, args) -> list[dict]:
    """Rows for one size and dtype: prefill and decode at each context, rounds alternating
    between the two engines' processes."""
    rng = np.random.default_rng(2)
    vocab = _peer_models.SIZES[size][1]
    n_ctx = max(args.contexts) + args.decode + 16
    engines = {"ours": Remote("ours", forms.ours, dtype, n_ctx, args),
               "llama.cpp": Remote("llama.cpp", forms.gguf[dtype], dtype, n_ctx, args)}
    rows = []
    for ctx in args.contexts:
        prompt, steps = rng.integers(3, vocab, ctx).tolist(), rng.integers(3, vocab, args.decode).tolist()
        for engine in engines.values():  # warm-up
            engine.call(prompt=prompt[:64], steps=steps[:2])
        times = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                times[name].append(engine.call(prompt=prompt, steps=steps))
        load = os.getloadavg()[0]
        for phase, n in (("prefill", ctx), ("decode", args.decode)):
            tps = {k: n / statistics.median(t[f"{phase}_s"] for t in v) for k, v in times.items()}
            rows.append({"size": size, "dtype": dtype, "phase": phase, "context": ctx, "ours_tok_s": tps["ours"],
                         "llama_cpp_tok_s": tps["llama.cpp"], "ratio": tps["ours"] / tps["llama.cpp"],
                         "ours_ms_per_token": 1000 / tps["ours"], "load": load})
            _print_row(rows[-1])
    print(f"workers: {', '.join(f'{k} {e.info}' for k, e in engines.items())}")
    for engine in engines.values():
        engine.close()
    return rows


HEAD = "size | dtype | phase | context | llama.cpp tok/s | ours tok/s | ours / llama.cpp | ours ms/token | load"


def _print_row(r: dict) -> None:
    print(f"{r['size']} | {r['dtype']} | {r['phase']} | {r['context']} | {r['llama_cpp_tok_s']:,.1f} | "
          f"{r['ours_tok_s']:,.1f} | {r['ratio']:.2f}x | {r['ours_ms_per_token']:.2f} | {r['load']:.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    try:
        import llama_cpp
        import transformers  # noqa: F401
    except ImportError as e:
        sys.exit(f"this benchmark needs llama-cpp-python and transformers ({e.name} is missing): see the docstring")
    import torch

    converter = _peer_models.find_converter(args.llama_cpp)
    torch.set_num_threads(args.threads)
    print(subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip())
    print(f"torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, {args.threads} threads, "
          f"{args.repeats} rounds, {args.decode} decode steps, llama.cpp flash attention {args.flash_attn}, "
          f"llama.cpp OMP_WAIT_POLICY {args.peer_omp_wait}")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "parity": {}, "rows": []}
    for size in args.sizes:
        forms = _peer_models.build(size, args.workdir / size, converter, args.rebuild)
        result["parity"][size] = p = parity(forms, args)
        print(f"{size}: fp32 logits max |ours - transformers| {p['ours_vs_transformers']:.1e}, |llama.cpp - "
              f"transformers| {p['llama_cpp_vs_transformers']:.1e} (logits up to {p['logit_scale']:.2f}); "
              f"greedy tokens ours = llama.cpp: {p['greedy_match']}/16")
        print(HEAD)
        print("-|-|-|-|-|-|-|-|-")
        for dtype in args.dtypes:
            result["rows"] += measure(forms, size, dtype, args)
    print(subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip())
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
