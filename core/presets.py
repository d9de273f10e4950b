"""Shipped model configs: ``hybrid-tiny``, ``jamba-small``, ``attention-small`` (core/configs/)."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path as given, or the shipped preset of that name (``jamba-small``)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.exists():
        raise ConfigError(name_or_path, [f"no such file, and no shipped preset of that name "
                                         f"(presets: {', '.join(preset_names())})"])
    return preset
