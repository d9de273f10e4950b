"""Prefill speed on CPU: our converted Nemotron-H and Bamba vs transformers' own, same weights.

transformers builds a random ``NemotronHForCausalLM`` (each layer one of Mamba-2, attention or
a squared-ReLU MLP) and a ``BambaForCausalLM`` (7 Mamba-2 layers and one attention layer with
Bamba's half-rotary RoPE, each followed by a SwiGLU MLP; Bamba-9B has 3 attention layers of 32),
saves each with ``save_pretrained``, and the
production converter (``load_hf``) reads it back as ours. Both run a full forward over the
same random tokens: transformers its pure-PyTorch path (no mamba-ssm on CPU: the chunked SSD
in torch ops), ours the SSD kernel ``impl: auto`` picks (printed). Logits are compared first.
Runs alternate theirs / ours (interleaved, so load drift hits both), medians of ``--repeats``.
A second row times one Mamba-2 mixer alone.

    python benchmarks/bench_hf_mamba2.py                     # 2k and 8k tokens, both families
    python benchmarks/bench_hf_mamba2.py --families nemotron_h --lengths 2048 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

PATTERN = "M-M-M*M-"  # Nemotron-H: 4 Mamba-2, 1 attention, 3 MLP layers


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=["nemotron_h", "bamba"], choices=["nemotron_h", "bamba"])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192], help="prefill lengths (default 2048 8192)")
    p.add_argument("--d-model", type=int, default=256, help="hidden_size (default 256)")
    p.add_argument("--d-state", type=int, default=64, help="Mamba-2 d_state (default 64)")
    p.add_argument("--headdim", type=int, default=32, help="Mamba-2 headdim (default 32; expand 2)")
    p.add_argument("--vocab", type=int, default=1024, help="vocab_size (default 1024)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per model, median (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _hf_config(family: str, args, transformers):
    d, heads = args.d_model, 2 * args.d_model // args.headdim
    common = {"vocab_size": args.vocab, "hidden_size": d, "intermediate_size": 4 * d, "tie_word_embeddings": False}
    if family == "nemotron_h":
        types = {"M": "linear_attention", "*": "full_attention", "-": "mlp"}
        return transformers.NemotronHConfig(
            **common, layers_block_type=[types[s] for s in PATTERN], num_attention_heads=8, num_key_value_heads=2,
            head_dim=d // 8, ssm_state_size=args.d_state, mamba_num_heads=heads, mamba_head_dim=args.headdim,
            n_groups=1, chunk_size=256)
    return transformers.BambaConfig(
        **common, num_hidden_layers=8, attn_layer_indices=[4], num_attention_heads=8, num_key_value_heads=2,
        mamba_n_heads=heads, mamba_d_head=args.headdim,
        mamba_n_groups=1, mamba_d_state=args.d_state, mamba_chunk_size=256)


def _models(family: str, args, transformers):
    """Their random model and ours converted from it by the production converter."""
    from hybrid_mllm.convert import load_hf

    torch.manual_seed(args.seed)
    theirs = transformers.AutoModelForCausalLM.from_config(_hf_config(family, args, transformers)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(Path(tmp) / "hf")
        ours, config = load_hf(Path(tmp) / "hf")
    return theirs, ours, config


def _interleaved(their_fn, our_fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds of each, runs alternating, after one warm-up of each."""
    their_fn(), our_fn()
    theirs, ours = [], []
    for _ in range(repeats):
        for fn, times in ((their_fn, theirs), (our_fn, ours)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(theirs), statistics.median(ours)


def _their_mixer(theirs, family: str, layer: int):
    block = theirs.model.layers[layer]
    return block.mixer if family == "nemotron_h" else block.mamba


def _rows(family: str, args, theirs, ours, config, gen) -> list[dict]:
    layer = config.model.layers.index("mamba2")
    our_mixer, their_mixer = ours.blocks[layer].mixer, _their_mixer(theirs, family, layer)
    rows = []
    for length in args.lengths:
        ids = torch.randint(0, args.vocab, (1, length), generator=gen)
        x = torch.randn(1, length, args.d_model, generator=gen)
        row = {"tokens": length}
        for part, their_fn, our_fn in (
            ("model", lambda: theirs(ids, use_cache=False), lambda: ours(ids)),  # noqa: B023
            ("mamba2_mixer", lambda: their_mixer(x), lambda: our_mixer(x)),  # noqa: B023
        ):
            t_hf, t_ours = _interleaved(their_fn, our_fn, args.repeats)
            row[part] = {"transformers_s": t_hf, "ours_s": t_ours, "speedup": t_hf / t_ours}
        rows.append(row)
    return rows


def _family(family: str, args, transformers) -> dict:
    theirs, ours, config = _models(family, args, transformers)
    gen = torch.Generator().manual_seed(args.seed)
    check = torch.randint(0, args.vocab, (1, 256), generator=gen)
    with torch.inference_mode():
        diff = (ours(check).logits - theirs(check, use_cache=False).logits).abs().max().item()
        rows = _rows(family, args, theirs, ours, config, gen)
    m = config.model
    return {"family": family, "layers": m.layers, "ffn_layers": m.ffn_layers, "d_model": m.d_model,
            "mamba2": m.mixers["mamba2"], "parameters": sum(p.numel() for p in ours.parameters()),
            "logits_max_abs_diff_256_tokens": diff, "rows": rows}


def _print(result: dict) -> None:
    print(f"CPU, {result['threads']} threads, fp32, batch 1; our SSD kernel (auto): {result['ssd_kernel']}; "
          f"load average before the run {result['load_average']:.1f} on {os.cpu_count()} CPUs; "
          f"medians of {result['repeats']} interleaved runs")
    head = ["family", "tokens", f"{'part':<16}", "transformers (s)", "ours (s)", "speed-up"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for f in result["families"]:
        n_m, diff = f["layers"].count("mamba2"), f["logits_max_abs_diff_256_tokens"]
        print(f"<!-- {f['family']}: {len(f['layers'])} layers ({n_m} Mamba-2), d_model {f['d_model']}, "
              f"{f['parameters'] / 1e6:.1f}M parameters, logits max |diff| {diff:.1e} -->")
        for r in f["rows"]:
            for part, label in (("model", "whole model"), ("mamba2_mixer", "one Mamba-2 mixer")):
                t = r[part]
                print(f"| {f['family']} | {r['tokens']} | {label} | {t['transformers_s']:.3f} | {t['ours_s']:.3f} | "
                      f"{t['speedup']:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import transformers
    except ImportError:
        sys.exit("this benchmark needs transformers: pip install -c constraints.txt transformers")
    from hybrid_mllm.core.ssd import auto_kernel_name

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]  # other work on the machine skews wall times: say so
    families = [_family(f, args, transformers) for f in args.families]
    result = {"ssd_kernel": auto_kernel_name(torch.device("cpu")), "threads": torch.get_num_threads(),
              "repeats": args.repeats, "torch": torch.__version__, "transformers": transformers.__version__,
              "load_average": load, "families": families}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
