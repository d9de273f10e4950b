"""No pickle, no code from data: the package sources are scanned for every way to run one.

The scanner reads the syntax tree (not the text, so docstrings and comments that mention
pickle do not count) and flags: importing pickle-family modules, ``torch.load`` without
``weights_only=True``, ``yaml.load`` without a SafeLoader, ``yaml.unsafe_load`` /
``full_load``, ``pickle.load*``, ``allow_pickle=True`` and the builtins ``eval`` / ``exec``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGES = ("core", "plugins", "runtime", "export", "train", "convert", "demo", "serve", "testing")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _call_problem(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
        return f"{func.id}() runs code"
    if _is_true(_keyword(call, "allow_pickle")):
        return "allow_pickle=True unpickles"
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
        return None
    owner, name = func.value.id, func.attr
    if owner in PICKLE_MODULES and name.startswith("load"):
        return f"{owner}.{name} unpickles"
    if owner == "torch" and name == "load" and not _is_true(_keyword(call, "weights_only")):
        return "torch.load without weights_only=True unpickles"
    if owner == "yaml" and name in UNSAFE_YAML:
        return f"yaml.{name} builds Python objects"
    if owner == "yaml" and name in ("load", "load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if loader is None or "SafeLoader" not in ast.unparse(loader):
            return f"yaml.{name} without a SafeLoader builds Python objects"
    return None


def scan_source(source: str, filename: str) -> list[str]:
    """'file:line: problem' for every unsafe construct in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        problem = None
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
            problem = f"import {names[0]}" if names else None
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            problem = f"from {node.module} import ..."
        elif isinstance(node, ast.Call):
            problem = _call_problem(node)
        if problem:
            found.append(f"{filename}:{node.lineno}: {problem}")
    return found


def package_files() -> list[Path]:
    """The .py files of the installed hybrid_mllm packages (the source folders, when editable)."""
    files = []
    for name in PACKAGES:
        folder = Path(importlib.import_module(f"hybrid_mllm.{name}").__file__).parent
        files += sorted(folder.rglob("*.py"))
    return files


def test_package_sources_have_no_pickle_or_eval():
    files = package_files()
    assert len(files) > 50, files
    problems = [p for f in files for p in scan_source(f.read_text(), str(f))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line", [
    "import pickle",
    "import dill as d",
    "from pickle import loads",
    "pickle.load(f)",
    "torch.load('w.pt')",
    "torch.load('w.pt', weights_only=False)",
    "yaml.load(text)",
    "yaml.load(text, Loader=yaml.FullLoader)",
    "yaml.unsafe_load(text)",
    "np.load('a.npy', allow_pickle=True)",
    "eval(user_text)",
    "exec(code)",
])
def test_scanner_flags_a_planted_violation(tmp_path, line):
    path = tmp_path / "planted.py"
    path.write_text(f"import torch, yaml\n\n\ndef f(text, code, user_text, f):\n    {line}\n")
    found = scan_source(path.read_text(), str(path))
    assert len(found) == 1 and found[0].startswith(f"{path}:5: "), found


@pytest.mark.parametrize("line", [
    "torch.load('w.pt', weights_only=True)",
    "yaml.safe_load(text)",
    "yaml.load(text, Loader=yaml.SafeLoader)",
    "yaml.load(text, Loader=_StrictSafeLoader)",
    "model.eval()",
    "x = 'import pickle'  # a string is not an import",
])
def test_scanner_passes_safe_code(line):
    assert scan_source(f"import torch, yaml\n{line}\n", "ok.py") == []
