"""Page faults and kernel time of a long CPU prefill, glibc's defaults against ``runtime.alloc``.

Each run is a fresh process (the malloc settings are process-wide and a process's first
prefill is the one that meets fresh memory) that builds a preset, prefills random tokens
``--prefills`` times in chunks and reports, per prefill, wall time, user and system CPU
time and minor page faults (``getrusage``). Variants alternate run by run (the machine
is shared), medians over ``--repeats``; ratios are against ``system`` in the same run. ``jemalloc`` runs with Debian's
libjemalloc2 preloaded (``apt-get install libjemalloc2``), where it is installed.

    python benchmarks/probe_prefill_faults.py                       # jamba-small, 8k tokens
    python benchmarks/probe_prefill_faults.py --tokens 2048 --repeats 2 --chunks 2048
    python benchmarks/probe_prefill_faults.py --perf                # + perf stat of one run each
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

MODES = ("system", "keep", "jemalloc")  # jemalloc: LD_PRELOAD'ed in place of glibc's malloc, where installed
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"  # Debian's libjemalloc2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="jamba-small", help="preset or YAML (default jamba-small)")
    p.add_argument("--tokens", type=int, default=8192, help="prompt length (default 8192)")
    p.add_argument("--chunks", type=int, nargs="+", default=[8192], help="prefill chunk sizes (default 8192)")
    p.add_argument("--prefills", type=int, default=2, help="prefills per process (default 2: cold, warm)")
    p.add_argument("--repeats", type=int, default=3, help="processes per variant, medians reported (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--perf", action="store_true", help="also run one process per mode under perf stat")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    return p


def _child(args) -> None:
    """Build, prefill, print one JSON line per prefill."""
    os.environ["HYBRID_MLLM_MALLOC"] = "keep" if args.child == "keep" else "system"
    import torch
    from hybrid_mllm.core.build import build_model
    from hybrid_mllm.core.config import load_config
    from hybrid_mllm.core.presets import resolve_config_path
    from hybrid_mllm.runtime.alloc import keep_freed_memory

    applied = keep_freed_memory()
    torch.set_num_threads(args.threads)
    config = load_config(resolve_config_path(args.config))
    model = build_model(config, seed=0, dtype=getattr(torch, args.dtype)).eval()
    ids = torch.randint(0, config.model.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.inference_mode():
        for i in range(args.prefills):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            out = model.prefill(ids, chunk_size=args.chunk)
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
            rows.append({"prefill": i, "wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime,
                         "sys_s": r1.ru_stime - r0.ru_stime, "minflt": r1.ru_minflt - r0.ru_minflt,
                         "maxrss_mib": r1.ru_maxrss / 1024, "logit0": out.logits[0, -1, :4].float().tolist()})
    print(json.dumps({"applied": applied, "rows": rows}))


def _spawn(args, mode: str, chunk: int, perf: bool = False) -> dict | str:
    cmd = [sys.executable, __file__, "--child", mode, "--config", args.config, "--tokens", str(args.tokens),
           "--chunk", str(chunk), "--prefills", str(args.prefills), "--threads", str(args.threads),
           "--dtype", args.dtype]
    if perf:
        cmd = ["perf", "stat", "-e", "task-clock,page-faults,context-switches", "--", *cmd]
    env = {**os.environ, "LD_PRELOAD": JEMALLOC} if mode == "jemalloc" else None
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return done.stderr if perf else json.loads(done.stdout.strip().splitlines()[-1])


def _table(args, runs: dict) -> None:
    print("mode     | chunk | prefill | wall s | user s | sys s | sys share | minor faults | tokens/s | "
          "tokens/s vs system | max RSS MiB")
    print("-|-|-|-|-|-|-|-|-|-|-")
    for (mode, chunk), reports in runs.items():
        for i in range(args.prefills):
            med = {k: statistics.median(r["rows"][i][k] for r in reports)
                   for k in ("wall_s", "user_s", "sys_s", "minflt", "maxrss_mib")}
            base = statistics.median(r["rows"][i]["wall_s"] for r in runs[("system", chunk)])
            share = med["sys_s"] / (med["user_s"] + med["sys_s"])
            print(f"{mode:<8} | {chunk} | {'cold' if i == 0 else f'warm {i}'} | {med['wall_s']:.2f} | "
                  f"{med['user_s']:.2f} | {med['sys_s']:.2f} | {share:.0%} | {med['minflt']:,.0f} | "
                  f"{args.tokens / med['wall_s']:,.0f} | {base / med['wall_s']:.2f}x | {med['maxrss_mib']:,.0f}")


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    p.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    print(f"{args.config}, {args.tokens} tokens, {args.dtype}, {args.threads} threads, {args.repeats} processes per "
          f"variant; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip())
    modes = [m for m in MODES if m != "jemalloc" or os.path.exists(JEMALLOC)]
    runs = {(m, c): [] for c in args.chunks for m in modes}
    for _ in range(args.repeats):
        for key, reports in runs.items():  # interleaved: one process of each variant per round
            reports.append(_spawn(args, *key))
    applied = {m: {r["applied"] for (mode, _), rs in runs.items() if mode == m for r in rs} for m in modes}
    first = args.chunks[0]  # the allocator must not change a single bit of the result
    same = len({str(r["rows"][-1]["logit0"]) for m in modes for r in runs[(m, first)]}) == 1
    print(f"settings in force: {applied}; logits identical across modes (chunk {first}): {same}")
    _table(args, runs)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.perf and shutil.which("perf"):
        for mode in modes:
            print(f"perf stat, {mode}, chunk {args.chunks[0]}:\n{_spawn(args, mode, args.chunks[0], perf=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
