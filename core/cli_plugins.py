"""``hybrid-plugins``: list every registered component, its kind and its package."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli import run_cli
from .registry import AUTOLOAD_ENV, KINDS, get_registry
from .scan import auto_kernel_name
from .ssd import auto_kernel_name as auto_ssd_kernel_name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hybrid-plugins",
        description="List the registered encoders, mixers, connectors, FFNs, scan and SSD kernels and export declarations, "
                    f"with the package that provides each. Set {AUTOLOAD_ENV}=1 to see the built-ins only.",
    )
    p.add_argument("--kind", choices=list(KINDS), help="only this kind of component")
    p.add_argument("pattern", nargs="?", default="*", help="glob on names, e.g. 'mamba*'")
    return p


def _details(entry) -> str:
    if entry.kind in ("export", "linear_kernel"):
        return entry.obj.description
    if entry.kind == "block_step":
        return f"{entry.obj.part}: {entry.obj.description}"
    if entry.kind in ("scan_kernel", "ssd_kernel"):
        devices = ", ".join(f"{d}:{p}" for d, p in entry.obj.priority.items())
        return f"{entry.obj.description} [priority {devices}]"
    doc = (entry.obj.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    registry = get_registry()
    table = Table(title="hybrid-mllm plugins")
    for column in ("kind", "name", "package", "details"):
        table.add_column(column, overflow="fold")
    for kind in [args.kind] if args.kind else KINDS:
        for name in registry.names(kind, args.pattern):
            entry = registry.entry(kind, name)
            table.add_row(kind, name, entry.package, escape(_details(entry)))  # '[priority ...]' is not markup
    console = Console(width=max(120, Console().width))
    console.print(table)
    console.print(f"scan kernel 'auto' on cpu: {auto_kernel_name('cpu')}; "
                  f"ssd kernel 'auto' on cpu: {auto_ssd_kernel_name('cpu')}")
    return 0


def entry() -> None:
    sys.exit(run_cli(main))
