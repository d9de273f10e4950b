"""Selective-scan speed on CPU: every CPU scan kernel against ``ref``, forward and forward+backward.

For each sequence length L and each kernel registered for CPU and available here (``ref``,
``chunked``, ``cpu_fused``, ...), one fresh subprocess measures:

- forward time: the first call is a warm-up; then the median of ``--repeats`` calls
  (time.perf_counter), or a single call when the warm-up took over 2 s (``ref`` at long L);
- its speed-up over ``ref`` and its max |y - y_ref| over the whole output (y_ref is handed
  from the ``ref`` subprocess through a safetensors file);
- forward+backward time (``y.backward(random gradient)``, gradients for every input) and
  its speed-up over autograd through ``ref``, which is only run at ``--ref-bwd-lengths``
  (it takes minutes at 16k); elsewhere the ratio is reported as not measured;
- peak extra memory of one call: the peak resident set size during the call (VmHWM, reset
  through /proc/self/clear_refs) minus the resident size just before it, after gc and
  malloc_trim, with the inputs (and, for forward+backward, the incoming gradient) already
  allocated and the kernel warmed up on a tiny input. It counts outputs, workspaces and,
  for forward+backward, what autograd keeps for the backward.

Each subprocess runs under an address-space limit (``--mem-limit-gib``, lowered to what the
machine has available) so that a kernel that needs too much memory is reported as such
instead of pushing the machine into swap.

    python benchmarks/bench_scan.py                      # D=1024, N=16, L = 1024 4096 16384 (tens of minutes)
    python benchmarks/bench_scan.py --quick              # a smoke run, about a minute
    python benchmarks/bench_scan.py --kernels ref cpu_fused --json out/bench_scan_cpu.json
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SLOW_CALL_S = 2.0  # a warm-up slower than this is followed by a single timed call
RESULT_PREFIX = "RESULT "
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384], help="sequence lengths L")
    p.add_argument("--d", type=int, default=1024, help="channels D (d_inner)")
    p.add_argument("--n", type=int, default=16, help="state size N (d_state)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of u, delta, z, B, C")
    p.add_argument("--kernels", nargs="+", help="scan kernels to run (default: every one available on CPU)")
    p.add_argument("--ref-bwd-lengths", type=int, nargs="*", default=[1024, 4096],
                   help="lengths at which forward+backward through ref is measured (slow)")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up (median reported)")
    p.add_argument("--mem-limit-gib", type=float, default=8.0, help="address-space limit of each subprocess")
    p.add_argument("--json", help="also write every result to this JSON file")
    p.add_argument("--quick", action="store_true", help="defaults D=256, L = 256 1024, 3 repeats: a smoke run")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one (kernel, L) measurement
    args = p.parse_args(argv)
    if args.quick:  # smaller defaults; options given on the command line still win
        quick = {"d": 256, "lengths": [256, 1024], "ref_bwd_lengths": [256, 1024], "repeats": 3}
        for name, value in quick.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


# ---- inputs, timing, memory (run inside the subprocess) ------------------------------------

def make_inputs(batch: int, d: int, n: int, length: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """Mamba-like inputs: softplus(delta + delta_bias) in ~[0.001, 0.1], A = -(1..N), with z,
    D and delta_bias. Filled in place, so making them leaves no freed temporaries behind."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.empty(*shape, dtype=dtype).normal_(0.0, scale, generator=g)

    return {
        "u": randn(batch, d, length), "delta": randn(batch, d, length, scale=0.5),
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        "B": randn(batch, n, length), "C": randn(batch, n, length),
        "D": torch.ones(d), "z": randn(batch, d, length),
        "delta_bias": torch.empty(d).uniform_(-6.9, -2.3, generator=g),  # softplus^-1 of ~[1e-3, 0.1]
        "softplus": True, "state": None,
    }


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM, VmSize)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_first_call(fn):
    """(result, seconds, peak extra bytes) of one call of `fn`; see the module docstring."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)  # freed heap pages back to the OS: RSS is what is live
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, (_status_kib("VmHWM") - before) * 1024


def median_time(fn, repeats: int, warmup_s: float) -> tuple[float, int]:
    """Median seconds of `repeats` calls (one call after a slow warm-up) and the count."""
    runs = 1 if warmup_s > SLOW_CALL_S else repeats
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), runs


def limit_address_space(gib: float) -> None:
    """Let this process map at most `gib` more than it has now: an allocation past it fails
    (torch raises RuntimeError) instead of the machine swapping."""
    extra = int(gib * 2**30) + _status_kib("VmSize") * 1024
    resource.setrlimit(resource.RLIMIT_AS, (extra, resource.getrlimit(resource.RLIMIT_AS)[1]))


# ---- one (kernel, L) measurement: the subprocess --------------------------------------------

def run_child(spec: dict) -> dict:
    from hybrid_mllm.core.registry import get_registry
    from safetensors.torch import load_file, save_file

    name, is_ref = spec["kernel"], spec["kernel"] == "ref"
    kernel = get_registry().get("scan_kernel", name).fn
    dtype = DTYPES[spec["dtype"]]
    inputs = make_inputs(spec["batch"], spec["d"], spec["n"], spec["length"], dtype)
    grad_y = torch.empty_like(inputs["u"]).normal_(generator=torch.Generator().manual_seed(1))
    warm = make_inputs(1, 4, spec["n"], 8, dtype)
    _forward_backward(kernel, warm, torch.ones_like(warm["u"]))  # loads/compiles, starts threads
    limit_address_space(spec["mem_limit_gib"])
    ref_file = Path(spec["ref_dir"]) / f"ref_{spec['length']}.safetensors"
    reference = load_file(ref_file) if ref_file.exists() else {}
    out, handed_on = {"kernel": name, "length": spec["length"]}, {}
    forward = functools.partial(kernel, **inputs)
    if (result := _first_call(forward, "fwd", out, spec)) is not None:
        y, state = result[0].float().contiguous(), result[1].contiguous()
        if "y" in reference:
            out["max_abs_err_y"] = (y - reference["y"]).abs().max().item()
            out["max_abs_err_state"] = (state - reference["state"]).abs().max().item()
        handed_on |= {"y": y, "state": state} if is_ref else {}
        del result, y, state  # the timed calls run without the first call's outputs alive
        _timed_calls(forward, "fwd", out, spec)
    backward = functools.partial(_forward_backward, kernel, inputs, grad_y)
    if spec["backward"] and (grads := _first_call(backward, "fwd_bwd", out, spec)) is not None:
        if any(f"grad_{k}" in reference for k in grads):
            out["max_rel_err_grad"] = max(
                ((g.float() - reference[f"grad_{k}"]).abs().max() / reference[f"grad_{k}"].abs().max()).item()
                for k, g in grads.items())
        handed_on |= {f"grad_{k}": g.float().contiguous() for k, g in grads.items()} if is_ref else {}
        del grads
        _timed_calls(backward, "fwd_bwd", out, spec)
    if is_ref:
        save_file(handed_on, ref_file)
    return out


def _first_call(call, key: str, out: dict, spec: dict):
    """The result of the first call (the warm-up), its time and memory in `out`; None if it failed."""
    try:
        result, out[f"{key}_first_s"], out[f"{key}_peak_extra_bytes"] = measure_first_call(call)
        return result
    except (RuntimeError, MemoryError) as exc:
        out[f"{key}_error"] = _failure(exc, spec)
        return None


def _timed_calls(call, key: str, out: dict, spec: dict) -> None:
    try:
        out[f"{key}_s"], out[f"{key}_runs"] = median_time(call, spec["repeats"], out[f"{key}_first_s"])
    except (RuntimeError, MemoryError) as exc:
        out[f"{key}_error"] = "timed calls: " + _failure(exc, spec)


def _forward_backward(kernel, inputs: dict, grad_y: torch.Tensor) -> dict:
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items() if torch.is_tensor(v)}
    y, _ = kernel(**{**inputs, **leaves})
    y.backward(grad_y)
    return {k: v.grad for k, v in leaves.items()}


def _failure(exc: BaseException, spec: dict) -> str:
    if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
        return f"out of memory (limit {spec['mem_limit_gib']:.1f} GiB)"
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


# ---- the parent: one subprocess per (L, kernel) ---------------------------------------------

def cpu_kernels(requested: list[str] | None) -> list[str]:
    """Registered kernels that run on CPU here, ``ref`` first (the others are compared to it)."""
    from hybrid_mllm.core.registry import get_registry

    registry = get_registry()
    names = []
    for name in requested or registry.names("scan_kernel"):
        kernel = registry.get("scan_kernel", name)
        if "cpu" not in kernel.priority:
            print(f"skipping {name}: it does not run on CPU", file=sys.stderr)
        elif reason := kernel.available(torch.device("cpu")):
            print(f"skipping {name}: {reason}", file=sys.stderr)
        else:
            names.append(name)
    return sorted(names, key=lambda n: n != "ref")


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 2**20


def run_subprocess(spec: dict) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"kernel": spec["kernel"], "length": spec["length"],
            "fwd_error": f"subprocess failed (exit {proc.returncode}): {tail}"}


def run_all(args: argparse.Namespace) -> list[dict]:
    kernels = cpu_kernels(args.kernels)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_scan_") as ref_dir:
        for length in args.lengths:
            for name in kernels:
                backward = not args.no_backward and (name != "ref" or length in args.ref_bwd_lengths)
                spec = {"kernel": name, "length": length, "batch": args.batch, "d": args.d, "n": args.n,
                        "dtype": args.dtype, "repeats": args.repeats, "backward": backward, "ref_dir": ref_dir,
                        "mem_limit_gib": min(args.mem_limit_gib, max(1.0, available_gib() - 1.0))}
                result = run_subprocess(spec)
                results.append(result)
                print(format_row(result, results), flush=True)
    return results


# ---- report -----------------------------------------------------------------------------

COLUMNS = ("kernel", "L", "fwd ms", "vs ref", "max|dy|", "fwd peak MiB",
           "fwd+bwd ms", "vs ref", "max rel dgrad", "fwd+bwd peak MiB")


def _ref_of(result: dict, results: list[dict]) -> dict:
    return next((r for r in results if r["kernel"] == "ref" and r["length"] == result["length"]), {})


def _ratio(ref_s, s) -> str:
    return f"{ref_s / s:.1f}x" if ref_s and s else "not measured"


def _ms(result: dict, key: str) -> str:
    if key + "_s" in result:
        runs = result[key + "_runs"]
        return f"{result[key + '_s'] * 1e3:.1f}" + ("" if runs > 1 else " (1 run)")
    return result.get(key + "_error", "not run")


def _mib(value) -> str:
    if value is None:
        return "-"
    mib = value / 2**20
    return f"{mib:.1f}" if mib < 10 else f"{mib:.0f}"


def _err(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def format_row(result: dict, results: list[dict]) -> str:
    ref = _ref_of(result, results)
    cells = (
        result["kernel"], str(result["length"]), _ms(result, "fwd"), _ratio(ref.get("fwd_s"), result.get("fwd_s")),
        _err(result.get("max_abs_err_y")), _mib(result.get("fwd_peak_extra_bytes")),
        _ms(result, "fwd_bwd"), _ratio(ref.get("fwd_bwd_s"), result.get("fwd_bwd_s")),
        _err(result.get("max_rel_err_grad")), _mib(result.get("fwd_bwd_peak_extra_bytes")),
    )
    return " | ".join(cells)


def table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + format_row(r, results) + " |" for r in results]
    return "\n".join(lines)


def describe(args: argparse.Namespace) -> str:
    y_mib = args.batch * args.d * max(args.lengths) * DTYPES[args.dtype].itemsize / 2**20
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"batch {args.batch}, D={args.d}, N={args.n}, {args.dtype} inputs, softplus + delta_bias + D + z; "
            f"{torch.get_num_threads()} threads on {os.cpu_count()} CPUs ({cpu}); torch {torch.__version__}; "
            f"y is {y_mib:.0f} MiB at L={max(args.lengths)}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    print(describe(args))
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(" | ".join(COLUMNS))
    results = run_all(args)
    print(f"load average at end: {os.getloadavg()[0]:.2f}\n")
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"setup": describe(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
