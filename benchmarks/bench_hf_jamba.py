"""Forward-pass speed on CPU: our converted Jamba vs transformers' ``JambaForCausalLM``, same weights.

transformers builds a random Jamba (1 attention : 7 Mamba, MoE every other layer by
default), saves it with ``save_pretrained``, and the production converter (``load_hf``)
reads it back as ours. Both run a full forward (logits at every position) over the same
random tokens; transformers takes its pure-PyTorch path (no mamba-ssm / causal-conv1d on
CPU), ours the scan kernel that ``impl: auto`` picks. Logits are compared first. A second
row per length times one Mamba mixer alone, where the two implementations differ; the
rest of the model (projections, MoE, attention, head) is the same dense work on both sides.

    python benchmarks/bench_hf_jamba.py                  # 2k and 8k tokens, a table
    python benchmarks/bench_hf_jamba.py --json --lengths 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192], help="sequence lengths (default 2048 8192)")
    p.add_argument("--d-model", type=int, default=256, help="hidden_size (default 256)")
    p.add_argument("--layers", type=int, default=8, help="num_hidden_layers (default 8)")
    p.add_argument("--attn-period", type=int, default=8, help="attn_layer_period (default 8: 1 attention : 7 Mamba)")
    p.add_argument("--attn-offset", type=int, default=4, help="attn_layer_offset (default 4)")
    p.add_argument("--experts", type=int, default=4, help="num_experts, MoE every other layer (default 4; 1: no MoE)")
    p.add_argument("--top-k", type=int, default=2, help="num_experts_per_tok (default 2)")
    p.add_argument("--vocab", type=int, default=1024, help="vocab_size (default 1024)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per length and model, median reported (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _time(fn, repeats: int) -> dict[str, float]:
    """Median wall time and median process CPU time (all threads) of `fn()` in seconds, after
    one untimed warm-up run. CPU time is the steadier of the two on a shared machine."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def _models(args, transformers):
    """HF's random JambaForCausalLM and ours converted from it by the production converter."""
    from hybrid_mllm.convert import load_hf

    config = transformers.JambaConfig(
        vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=4 * args.d_model,
        num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=2,
        attn_layer_period=args.attn_period, attn_layer_offset=args.attn_offset,
        num_experts=args.experts, num_experts_per_tok=min(args.top_k, args.experts),
        expert_layer_period=2, expert_layer_offset=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
    )
    torch.manual_seed(args.seed)
    theirs = transformers.JambaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(Path(tmp) / "hf")
        ours, ours_config = load_hf(Path(tmp) / "hf")
    return theirs, ours, ours_config


def _rows(args, theirs, ours, ours_config, gen) -> list[dict]:
    """Per length: the whole model and one Mamba mixer alone (the first Mamba layer, same
    weights: where the two differ most), timed in both, with the Amdahl bound."""
    layer = ours_config.model.layers.index("mamba")
    our_mixer, their_mixer = ours.blocks[layer].mixer, theirs.model.layers[layer].mamba
    rows = []
    for length in args.lengths:
        ids = torch.randint(0, args.vocab, (1, length), generator=gen)
        x = torch.randn(1, length, args.d_model, generator=gen)
        row = {"tokens": length}
        for part, their_fn, our_fn in (
            ("model", lambda: theirs(ids, use_cache=False), lambda: ours(ids)),  # noqa: B023
            ("mamba_mixer", lambda: their_mixer(x), lambda: our_mixer(x)),  # noqa: B023
        ):
            t_hf, t_ours = _time(their_fn, args.repeats), _time(our_fn, args.repeats)
            row[part] = {"transformers": t_hf, "ours": t_ours,
                         "speedup_wall": t_hf["wall_s"] / t_ours["wall_s"],
                         "speedup_cpu": t_hf["cpu_s"] / t_ours["cpu_s"]}
        # the whole-model speed-up if our Mamba mixers took no time at all (Amdahl)
        n_mamba = ours_config.model.layers.count("mamba")
        rest = row["model"]["ours"]["wall_s"] - n_mamba * row["mamba_mixer"]["ours"]["wall_s"]
        row["speedup_bound_wall"] = row["model"]["transformers"]["wall_s"] / rest if rest > 0 else None
        rows.append(row)
    return rows


def _print(result: dict) -> None:
    m, rows = result["model"], result["rows"]
    n_attn = m["layers"].count("attention")
    print(f"Jamba, {len(m['layers'])} layers ({n_attn} attention : {len(m['layers']) - n_attn} Mamba), "
          f"d_model {m['d_model']}, {m['experts']} experts top-{m['top_k']}, {m['parameters'] / 1e6:.1f}M parameters; "
          f"CPU, {result['threads']} threads, fp32, batch 1; our scan kernel (auto): {result['scan_kernel']}")
    print(f"logits max |ours - transformers| at 256 tokens: {result['logits_max_abs_diff_256_tokens']:.1e}")
    print(f"load average before the run: {result['load_average']:.1f} on {os.cpu_count()} CPUs")
    head = ["tokens", f"{'part':<15}", "transformers wall (s)", "ours wall (s)", "speed-up wall", "speed-up CPU time"]
    print(" | ".join(head))
    print("-|-".join("-" * len(h) for h in head))
    for r in rows:
        for part, label in (("model", "whole model"), ("mamba_mixer", "one Mamba mixer")):
            t = r[part]
            cells = [str(r["tokens"]), label, f"{t['transformers']['wall_s']:.3f}", f"{t['ours']['wall_s']:.3f}",
                     f"{t['speedup_wall']:.1f}x", f"{t['speedup_cpu']:.1f}x"]
            print(" | ".join(c.ljust(len(h)) if i == 1 else c.rjust(len(h)) for i, (c, h) in enumerate(zip(cells, head))))
    for r in rows:
        bound = r["speedup_bound_wall"]
        print(f"{r['tokens']} tokens: whole-model speed-up if our Mamba mixers took no time "
              f"(ours minus {m['layers'].count('mamba')} x one mixer): "
              + (f"{bound:.1f}x" if bound else "not measurable (the mixers' times exceed the model's)"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import transformers
    except ImportError:
        sys.exit("this benchmark needs transformers: pip install -c constraints.txt transformers")
    from hybrid_mllm.core.scan import auto_kernel_name

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]  # other work on the machine skews wall times: say so
    theirs, ours, ours_config = _models(args, transformers)
    gen = torch.Generator().manual_seed(args.seed)
    check = torch.randint(0, args.vocab, (1, 256), generator=gen)
    with torch.inference_mode():
        diff = (ours(check).logits - theirs(check, use_cache=False).logits).abs().max().item()
        rows = _rows(args, theirs, ours, ours_config, gen)
    result = {
        "model": {"layers": ours_config.model.layers, "ffn_layers": ours_config.model.ffn_layers,
                  "d_model": args.d_model, "experts": args.experts, "top_k": theirs.config.num_experts_per_tok,
                  "vocab": args.vocab, "parameters": sum(p.numel() for p in ours.parameters())},
        "scan_kernel": auto_kernel_name("cpu"), "threads": torch.get_num_threads(), "repeats": args.repeats,
        "torch": torch.__version__, "transformers": transformers.__version__, "cpu": platform.processor() or
        platform.machine(), "load_average": load, "logits_max_abs_diff_256_tokens": diff, "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
