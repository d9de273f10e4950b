"""Dependencies point inward, and private modules stay private (read from the source, not run).

core imports no other wing; plugins, runtime and convert import core only; train and export
import core and runtime (and export the mixers' ops only through the registry); the demo
imports core, runtime and train; the server core and runtime; plugins do
not import each other; a module named ``_x.py`` is imported by nothing outside its package.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WINGS = {"core": "core", "plugins": "plugins", "runtime": "runtime", "export": "export", "train": "train",
         "convert": "convert", "demo": "demo", "serve": "serve", "testing": "testing"}
ALLOWED = {  # wing -> the wings it may import
    "core": {"core"},
    "plugins": {"core", "plugins"},
    "runtime": {"core", "runtime"},
    "convert": {"core", "convert"},
    "train": {"core", "runtime", "train"},
    "export": {"core", "runtime", "export"},
    "demo": {"core", "runtime", "train", "demo"},
    "serve": {"core", "runtime", "serve"},
    "testing": {"core", "runtime", "export", "testing"},
}


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved against its package)."""
    package = ["hybrid_mllm", *path.relative_to(ROOT).parent.parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return [n for n in names if n.startswith("hybrid_mllm.")]


def _files(wing: str) -> list[Path]:
    return sorted((ROOT / wing).rglob("*.py"))


@pytest.mark.parametrize("wing", list(WINGS))
def test_wings_import_only_inward(wing):
    bad = [f"{path.relative_to(ROOT)} imports {name}" for path in _files(wing) for name in _imports(path)
           if name.split(".")[1] not in ALLOWED[wing]]
    assert not bad, "\n".join(bad)


def test_plugins_do_not_import_each_other():
    bad = [f"{path.relative_to(ROOT)} imports {name}" for path in _files("plugins") for name in _imports(path)
           if name.startswith("hybrid_mllm.plugins.") and name.split(".")[2] != path.relative_to(ROOT).parts[1]]
    assert not bad, "\n".join(bad)


def _private_module(name: str) -> str | None:
    """The package of the first private module (a ``_x.py`` file) on an import path, if any."""
    parts = name.split(".")
    folder = ROOT / WINGS.get(parts[1], parts[1])
    for i, part in enumerate(parts[2:], 2):
        if part.startswith("_") and not part.startswith("__") and (folder / f"{part}.py").is_file():
            return ".".join(parts[:i])
        folder = folder / part
    return None


def test_private_modules_stay_in_their_package():
    everything = [p for wing in WINGS for p in _files(wing)] + sorted((ROOT / "benchmarks").rglob("*.py")) \
        + sorted((ROOT / "tests").rglob("*.py"))
    bad = []
    for path in everything:
        here = ".".join(["hybrid_mllm", *path.relative_to(ROOT).parent.parts])
        for name in _imports(path):
            package = _private_module(name)
            if package is not None and package != here:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)
