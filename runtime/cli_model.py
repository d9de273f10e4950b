"""``hybrid-model CONFIG``: build a model from YAML, run it, and check its state path.

Prints the layer plan and parameter counts, prefills random tokens, decodes a few more
token by token through the explicit state, and checks that decoding matches the full
forward pass. A quick end-to-end run for any config or third-party mixer.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from hybrid_mllm.core.build import build_model
from hybrid_mllm.core.cli import check_device, run_cli
from hybrid_mllm.core.config import load_config, save_config
from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.core.presets import preset_names, resolve_config_path
from hybrid_mllm.core.scan import auto_kernel_name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-model", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help=f"a YAML file or a shipped preset ({', '.join(preset_names())})")
    p.add_argument("--seq-len", type=int, default=1024, help="prompt length to prefill (default 1024)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens to decode one by one (default 16)")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and tokens")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--save-config", metavar="PATH", help="write the resolved config (explicit per-layer lists)")
    return p


def _plan_table(model, config) -> Table:
    table = Table(title=f"{config.name}: {config.model.n_layer} layers, d_model {config.model.d_model}")
    for column in ("layer", "mixer", "ffn", "parameters"):
        table.add_column(column, justify="right" if column in ("layer", "parameters") else "left")
    for i, block in enumerate(model.blocks):
        n = sum(p.numel() for p in block.parameters())
        table.add_row(str(i), config.model.layers[i], config.model.ffn_layers[i], f"{n:,}")
    return table


def _state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for layer in state for t in layer)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.seq_len < 1 or args.new_tokens < 0 or args.batch < 1:
        raise HybridError("--seq-len and --batch must be >= 1 and --new-tokens >= 0")
    check_device(args.device)
    console = Console()
    config = load_config(resolve_config_path(args.config))
    model = build_model(config, seed=args.seed, device=args.device).eval()
    console.print(_plan_table(model, config))
    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"parameters: {n_params:,}   scan kernel (auto on {args.device}): {auto_kernel_name(args.device)}")
    if args.save_config:
        save_config(config, args.save_config)
        console.print(f"resolved config written to {args.save_config}")
    torch.manual_seed(args.seed)
    ids = torch.randint(0, config.model.vocab_size, (args.batch, args.seq_len + args.new_tokens), device=args.device)
    with torch.no_grad():
        _run(model, ids, args, console)
    return 0


def _run(model, ids, args, console) -> None:
    prompt, rest = ids[:, :args.seq_len], ids[:, args.seq_len:]
    t0 = time.perf_counter()
    out = model(prompt, num_logits=1)
    prefill_s = time.perf_counter() - t0
    console.print(f"prefill {args.batch}x{args.seq_len} tokens: {prefill_s:.3f} s "
                  f"({args.batch * args.seq_len / prefill_s:,.0f} tokens/s), state {_state_bytes(out.state) / 2**20:.2f} MiB")
    if not args.new_tokens:
        return
    state, step_logits = out.state, []
    t0 = time.perf_counter()
    for t in range(args.new_tokens):
        step = model(rest[:, t:t + 1], state=state)
        state = step.state
        step_logits.append(step.logits)
    decode_s = time.perf_counter() - t0
    full = model(ids, num_logits=args.new_tokens).logits
    diff = (torch.cat(step_logits, 1) - full).abs().max().item()
    console.print(f"decode {args.new_tokens} tokens one by one: {1000 * decode_s / args.new_tokens:.1f} ms/token")
    verdict = "[green]OK[/green]" if diff < 1e-3 else "[red]MISMATCH[/red]"
    console.print(f"step-by-step decoding vs full forward: max |diff| = {diff:.2e} {verdict}")
    if diff >= 1e-3:
        raise HybridError(f"decoding through the state differs from the full forward by {diff:.2e}")


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
