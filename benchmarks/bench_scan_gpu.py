"""Selective-scan speed on a CUDA GPU: the Triton kernel vs memory bandwidth, chunked and mamba-ssm.

Every timed configuration is first checked against the ``chunked`` kernel run in float32
on a slice of the same inputs (the first and last channels of the last batch row, the
whole sequence); a configuration that fails the check gets no speed, only "WRONG".

Bandwidth: the forward must read u, delta, z (batch, D, L), B, C (batch, N, L) and write
y (batch, D, L), so

    bytes = batch * L * (D * (3 * s_in + s_out) + 2 * N * s_in)

with s_in, s_out the element sizes of the inputs and of y (A, D, delta_bias and the
states are O(D N) and left out). Achieved bandwidth = bytes / time, reported as a
fraction of the peak measured in the same run: a device-to-device copy of a large
buffer, counting its read and its write.

    python benchmarks/bench_scan_gpu.py --json out/bench_scan.json
    python benchmarks/bench_scan_gpu.py --quick            # smaller sizes, a few seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

H100_SXM_DATASHEET_TBPS = 3.35
CHECK_CHANNELS = 4  # checked channels at each end of the last batch row


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--d-inner", type=int, nargs="+", default=[2048, 4096], help="channels D (d_inner)")
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536, 131072], help="sequence lengths L")
    p.add_argument("--min-channels", type=int, default=16384,
                   help="batch = ceil(min_channels / D), so that batch * D channels fill the GPU")
    p.add_argument("--d-state", type=int, default=16, help="N (d_state)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="dtype of u, delta, z, B, C")
    p.add_argument("--bc-layout", choices=["contiguous", "mamba"], default="contiguous",
                   help="B, C as contiguous (batch, N, L), or as the Mamba block passes them: "
                        "(batch, L, N) tensors viewed as (batch, N, L)")
    p.add_argument("--compare-length", type=int, default=2048, help="L of the Triton vs chunked comparison")
    p.add_argument("--backward-length", type=int, default=16384, help="L of the forward+backward timings")
    p.add_argument("--copy-gib", type=float, default=4.0, help="size of the bandwidth-probe copy (GiB)")
    p.add_argument("--tune", action="store_true",
                   help="also time other (BLOCK_D, num_warps) launch configs of the Triton kernels")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every path")
    args = p.parse_args(argv)
    if args.quick:
        args.d_inner, args.lengths, args.min_channels = [2048], [4096], 4096
        args.compare_length, args.backward_length, args.copy_gib = 1024, 2048, 1.0
    return args


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# --- inputs, checks, timing ----------------------------------------------------------------


BC_LAYOUT = "contiguous"  # set from --bc-layout


def make_inputs(batch, d, n, length, dtype, seed=0):
    """Mamba-like inputs on the GPU: softplus(delta + bias) in ~[0.001, 0.1], A = -(1..N)."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(dtype)

    def bc():
        return r(batch, n, length) if BC_LAYOUT == "contiguous" else r(batch, length, n).transpose(1, 2)

    return {
        "u": r(batch, d, length), "delta": r(batch, d, length, scale=0.5),
        "A": -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(d, 1),
        "B": bc(), "C": bc(),
        "D": torch.ones(d, device="cuda"), "z": r(batch, d, length),
        "delta_bias": torch.empty(d, device="cuda").uniform_(-6.9, -2.3, generator=g),  # softplus^-1 of ~[1e-3, 0.1]
        "softplus": True, "state": None,
    }


def input_slice(inputs, channels):
    """The last batch row, the given channels, in float32."""
    out = {}
    for k, v in inputs.items():
        if not torch.is_tensor(v):
            out[k] = v
        elif k in ("u", "delta", "z"):
            out[k] = v[-1:, channels].float()
        elif k in ("B", "C"):
            out[k] = v[-1:].float()
        elif k in ("A", "D", "delta_bias"):
            out[k] = v[channels].float()
    return out


def checked_channels(d):
    idx = list(range(min(CHECK_CHANNELS, d))) + list(range(max(d - CHECK_CHANNELS, CHECK_CHANNELS), d))
    return torch.tensor(idx, device="cuda")


def rel_error(actual, expected) -> float:
    actual, expected = actual.float(), expected.float()
    return (actual - expected).abs().max().item() / max(1.0, expected.abs().max().item())


def check_forward(fn, inputs, tol) -> float:
    """Max relative error of fn's y and last state against chunked (float32) on a slice."""
    from hybrid_mllm.plugins.mixers.scan_chunked import selective_scan_chunked

    channels = checked_channels(inputs["u"].shape[1])
    with torch.no_grad():
        y, h = fn(**inputs)
        y_ref, h_ref = selective_scan_chunked(**input_slice(inputs, channels))
    err = max(rel_error(y[-1:, channels], y_ref), rel_error(h[-1:, channels], h_ref))
    del y, h
    if not err <= tol:  # also catches NaN
        raise AssertionError(f"max relative error {err:.3e} > {tol}")
    return err


def check_backward(fn, inputs, tol) -> float:
    """Grads of fn against autograd through chunked on a slice.

    dy is zero outside the checked channels, so dB and dC (sums over channels) come from
    the slice alone and can be checked too.
    """
    from hybrid_mllm.plugins.mixers.scan_chunked import selective_scan_chunked

    channels = checked_channels(inputs["u"].shape[1])
    names = [k for k, v in inputs.items() if torch.is_tensor(v)]
    leaves = {k: inputs[k].detach().clone().requires_grad_() for k in names}
    y, _ = fn(**{**inputs, **leaves})
    dy = torch.zeros_like(y)
    dy[-1:, channels] = torch.randn_like(dy[-1:, channels])
    y.backward(dy)
    sliced = {k: v.detach().requires_grad_() for k, v in input_slice(inputs, channels).items() if torch.is_tensor(v)}
    y_ref, _ = selective_scan_chunked(**{**input_slice(inputs, channels), **sliced})
    y_ref.backward(dy[-1:, channels].float())
    err = 0.0
    for k in names:
        got = leaves[k].grad
        if k in ("u", "delta", "z"):
            got = got[-1:, channels]
        elif k in ("B", "C"):
            got = got[-1:]
        else:
            got = got[channels]
        err = max(err, rel_error(got, sliced[k].grad))
    if not err <= tol:
        raise AssertionError(f"max relative gradient error {err:.3e} > {tol}")
    return err


def bench_ms(fn, grad_to_none=None) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, grad_to_none=grad_to_none, return_mode="median")


def forward_bytes(batch, d, n, length, s_in, s_out) -> int:
    return batch * length * (d * (3 * s_in + s_out) + 2 * n * s_in)


def measure_copy_bandwidth(gib) -> dict:
    """Peak achievable bandwidth: dst.copy_(src) of `gib` GiB, bytes = read + write."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    moved = 2 * n * 4
    return {"bytes": moved, "ms": ms, "GBps": moved / ms / 1e6}


# --- the runs ---------------------------------------------------------------------------


class Results:
    def __init__(self, peak_gbps):
        self.rows: list[dict] = []
        self.peak_gbps = peak_gbps

    def add(self, kind, kernel, shape, dtype, fn, check, bytes_moved=None, grad_to_none=None):
        batch, d, n, length = shape
        row = {"kind": kind, "kernel": kernel, "batch": batch, "D": d, "N": n, "L": length, "dtype": dtype}
        try:
            row["rel_error"] = check()
        except Exception as error:  # a wrong (or failing) kernel gets no speed
            row["status"] = f"WRONG: {type(error).__name__}: {error}".splitlines()[0][:200]
            print(f"  {kernel:9s} {kind:8s} {shape}: {row['status']}", flush=True)
            self.rows.append(row)
            torch.cuda.empty_cache()
            return row
        try:
            row["ms"] = bench_ms(fn, grad_to_none)
        except Exception as error:  # e.g. out of memory: reported, the other runs go on
            row["status"] = f"FAILED: {type(error).__name__}: {error}".splitlines()[0][:200]
            print(f"  {kernel:9s} {kind:8s} {shape}: {row['status']}", flush=True)
            self.rows.append(row)
            torch.cuda.empty_cache()
            return row
        row["status"] = "ok"
        if bytes_moved is not None:
            row["GBps"] = bytes_moved / row["ms"] / 1e6
            row["frac_of_peak"] = row["GBps"] / self.peak_gbps
        print(f"  {kernel:9s} {kind:8s} {shape}: {row['ms']:.3f} ms"
              + (f", {row['GBps']:.0f} GB/s = {100 * row['frac_of_peak']:.1f}% of copy peak" if bytes_moved else "")
              + f" (error {row['rel_error']:.1e})", flush=True)
        self.rows.append(row)
        torch.cuda.empty_cache()
        return row


def forward_fn(fn, inputs):
    def run():
        with torch.no_grad():
            fn(**inputs)
    return run


def forward_backward_fn(fn, inputs):
    names = [k for k, v in inputs.items() if torch.is_tensor(v) and v.is_floating_point()]
    leaves = {k: inputs[k].detach().clone().requires_grad_() for k in names}
    dy = torch.randn_like(inputs["u"])

    def run():
        y, _ = fn(**{**inputs, **leaves})
        y.backward(dy)
    return run, list(leaves.values())


def kernels_to_compare():
    from hybrid_mllm.plugins.mixers.scan_mamba_ssm import mamba_ssm_available, selective_scan_mamba_ssm
    from hybrid_mllm.plugins.mixers.scan_triton import selective_scan_triton

    kernels = {"triton": selective_scan_triton}
    reason = mamba_ssm_available(torch.device("cuda"))
    if reason is None:
        kernels["mamba_ssm"] = selective_scan_mamba_ssm
    else:
        print(f"mamba_ssm not compared: {reason}")
    return kernels


def run_bandwidth(args, results, kernels):
    dtype = DTYPES[args.dtype]
    s_in = s_out = torch.finfo(dtype).bits // 8
    tol = 1e-2 if dtype != torch.float32 else 1e-3
    print("\nForward bandwidth: bytes = batch * L * (D * (3 * s_in + s_out) + 2 * N * s_in)"
          f", s_in = s_out = {s_in} bytes; B, C layout: {BC_LAYOUT}")
    for d in args.d_inner:
        batch = -(-args.min_channels // d)
        for length in args.lengths:
            shape = (batch, d, args.d_state, length)
            inputs = make_inputs(*shape, dtype)
            moved = forward_bytes(*shape, s_in, s_out)
            for name, fn in kernels.items():
                results.add("forward", name, shape, args.dtype, forward_fn(fn, inputs),
                            lambda fn=fn, inputs=inputs: check_forward(fn, inputs, tol), moved)
            del inputs


def run_chunked_comparison(args, results, kernels):
    from hybrid_mllm.plugins.mixers.scan_chunked import selective_scan_chunked

    dtype = DTYPES[args.dtype]
    tol = 1e-2 if dtype != torch.float32 else 1e-3
    d = args.d_inner[0]
    shape = (-(-args.min_channels // d), d, args.d_state, args.compare_length)
    print(f"\nTriton vs chunked (the PyTorch fallback) at L = {args.compare_length}")
    inputs = make_inputs(*shape, dtype)
    for name, fn in {**kernels, "chunked": selective_scan_chunked}.items():
        results.add("forward", name, shape, args.dtype, forward_fn(fn, inputs),
                    lambda fn=fn, inputs=inputs: check_forward(fn, inputs, tol))


def run_backward(args, results, kernels):
    dtype = DTYPES[args.dtype]
    tol = 2e-2 if dtype != torch.float32 else 1e-3
    d = args.d_inner[0]
    shape = (-(-args.min_channels // d), d, args.d_state, args.backward_length)
    print(f"\nForward + backward at L = {args.backward_length}")
    inputs = make_inputs(*shape, dtype)
    for name, fn in kernels.items():
        run, leaves = forward_backward_fn(fn, inputs)
        results.add("fwd+bwd", name, shape, args.dtype, run,
                    lambda fn=fn, inputs=inputs: check_backward(fn, inputs, tol), grad_to_none=leaves)
        del run, leaves


FWD_CONFIGS = [(64, 2), (32, 1), (128, 4), (16, 1)]
BWD_CONFIGS = [(32, 1, 32), (32, 1, 16), (64, 2, 32), (16, 1, 32)]


def run_tuning(args, results):
    """Other launch configs of the Triton kernels (the module defaults are restored).

    Forward: (BLOCK_D, num_warps); backward: (BLOCK_D, num_warps, CHECKPOINT_EVERY).
    """
    from hybrid_mllm.plugins.mixers import scan_triton as st

    dtype = DTYPES[args.dtype]
    s_in = torch.finfo(dtype).bits // 8
    d = args.d_inner[0]
    fwd_shape = (-(-args.min_channels // d), d, args.d_state, args.lengths[0])
    bwd_shape = fwd_shape[:3] + (args.backward_length,)
    names = ("FWD_BLOCK_D", "FWD_WARPS", "BWD_BLOCK_D", "BWD_WARPS", "CHECKPOINT_EVERY")
    defaults = {name: getattr(st, name) for name in names}
    print(f"\nTuning (defaults: {defaults})")
    try:
        inputs = make_inputs(*fwd_shape, dtype)
        for block, warps in FWD_CONFIGS:
            st.FWD_BLOCK_D, st.FWD_WARPS = block, warps
            results.add(f"fwd b{block}w{warps}", "triton", fwd_shape, args.dtype,
                        forward_fn(st.selective_scan_triton, inputs),
                        lambda inputs=inputs: check_forward(st.selective_scan_triton, inputs, 1e-2),
                        forward_bytes(*fwd_shape, s_in, s_in))
        for name, value in defaults.items():
            setattr(st, name, value)
        del inputs
        inputs = make_inputs(*bwd_shape, dtype)
        for block, warps, every in BWD_CONFIGS:
            st.BWD_BLOCK_D, st.BWD_WARPS, st.CHECKPOINT_EVERY = block, warps, every
            run, leaves = forward_backward_fn(st.selective_scan_triton, inputs)
            results.add(f"f+b b{block}w{warps}c{every}", "triton", bwd_shape, args.dtype, run,
                        lambda inputs=inputs: check_backward(st.selective_scan_triton, inputs, 2e-2), grad_to_none=leaves)
            del run, leaves
    finally:
        for name, value in defaults.items():
            setattr(st, name, value)


def print_table(results):
    print("\n" + "=" * 112)
    print(f"{'kind':22s} {'kernel':9s} {'batch':>5s} {'D':>5s} {'N':>3s} {'L':>7s} {'dtype':5s} "
          f"{'ms':>9s} {'GB/s':>7s} {'% peak':>6s} {'rel err':>8s}  status")
    for r in results.rows:
        ms = f"{r['ms']:.3f}" if "ms" in r else "-"
        gbps = f"{r['GBps']:.0f}" if "GBps" in r else "-"
        frac = f"{100 * r['frac_of_peak']:.1f}" if "frac_of_peak" in r else "-"
        err = f"{r['rel_error']:.1e}" if "rel_error" in r else "-"
        print(f"{r['kind']:22s} {r['kernel']:9s} {r['batch']:5d} {r['D']:5d} {r['N']:3d} {r['L']:7d} {r['dtype']:5s} "
              f"{ms:>9s} {gbps:>7s} {frac:>6s} {err:>8s}  {r['status']}")


def main(argv=None) -> int:
    global BC_LAYOUT
    args = parse_args(argv)
    BC_LAYOUT = args.bc_layout
    if not torch.cuda.is_available():
        print("bench_scan_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    import triton

    started = time.time()
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB; "
          f"torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}")
    copy = measure_copy_bandwidth(args.copy_gib)
    print(f"Copy peak: {copy['GBps']:.0f} GB/s measured ({args.copy_gib:g} GiB device-to-device copy, read + write"
          f" counted); H100 SXM datasheet: {H100_SXM_DATASHEET_TBPS} TB/s (for reference)")
    results = Results(copy["GBps"])
    kernels = kernels_to_compare()
    run_bandwidth(args, results, kernels)
    run_chunked_comparison(args, results, kernels)
    run_backward(args, results, kernels)
    if args.tune:
        run_tuning(args, results)
    print_table(results)
    wrong = [r for r in results.rows if r["status"] != "ok"]
    print(f"\n{len(results.rows)} configurations, {len(wrong)} wrong or failed; {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "device": props.name, "torch": torch.__version__, "triton": triton.__version__,
                "bytes_formula": "batch * L * (D * (3 * s_in + s_out) + 2 * N * s_in)",
                "copy_peak": copy, "h100_sxm_datasheet_TBps": H100_SXM_DATASHEET_TBPS,
                "args": vars(args), "results": results.rows,
            }, f, indent=2)
        print(f"wrote {args.json}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
