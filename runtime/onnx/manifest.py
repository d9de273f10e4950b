"""``manifest.json``: everything a runtime needs to use an export directory, and its checks.

The manifest lists every file with its size, the graphs with their input/output names,
shapes (axis names for dynamic axes) and dtypes, the decoder's state layout, the model
config, tokenizer and chat template, the opset, the flavour and the parity tolerances
stated and measured. `read_manifest` refuses a directory whose manifest or files are
missing or do not match, naming the file and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

from hybrid_mllm.core.paths import confined

from ..errors import ManifestError

MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "hybrid-mllm-onnx", 1
REQUIRED = ("format", "format_version", "flavour", "opset", "dtype", "config", "template", "files", "graphs",
            "state", "embeddings", "vision", "tolerances")


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Add the list of files (name -> bytes) and write ``manifest.json`` into `out_dir`."""
    files = {p.relative_to(out_dir).as_posix(): p.stat().st_size for p in sorted(out_dir.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(body, indent=2) + "\n")


def read_manifest(out_dir: str | Path) -> dict:
    """The manifest of an export directory, after checking it and every file it lists."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ManifestError(f"{out_dir}: no such directory "
                            f"(export one with: hybrid-export --onnx CHECKPOINT {out_dir})")
    path = out_dir / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: missing, so {out_dir} is not a hybrid-export ONNX directory "
                            f"(export one with: hybrid-export --onnx CHECKPOINT OUT_DIR)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{path}: not readable JSON ({e}); re-export the model") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object; re-export the model")
    if (manifest.get("format"), manifest.get("format_version")) != (FORMAT, FORMAT_VERSION):
        raise ManifestError(f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}, "
                            f"but this runtime reads {FORMAT!r} version {FORMAT_VERSION}; re-export with this version")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing key(s) {', '.join(missing)}; re-export the model")
    for name, size in manifest["files"].items():
        file = manifest_file(out_dir, name)
        if not file.is_file():
            raise ManifestError(f"{file}: missing (listed in {MANIFEST}); the export directory is incomplete: "
                                "copy it again or re-export")
        if file.stat().st_size != size:
            raise ManifestError(f"{file}: {file.stat().st_size:,} bytes but {MANIFEST} says {size:,}: the file was "
                                "changed or truncated; copy it again or re-export")
    return manifest


def manifest_file(out_dir: Path, name: str) -> Path:
    """A file the manifest names, refused when it points outside the export directory."""
    return confined(out_dir, name, where=f"the export directory (named in {MANIFEST})", error=ManifestError)


def check_graph(out_dir: Path, graph: dict, session) -> None:
    """The session's inputs and outputs must be the ones the manifest describes for `graph`."""
    for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        want = [v["name"] for v in graph[kind]]
        have = [v.name for v in actual]
        if want != have:
            raise ManifestError(f"{out_dir / graph['file']}: graph {kind} {have} do not match {MANIFEST}'s {want}; "
                                "the graph and the manifest come from different exports: re-export")
