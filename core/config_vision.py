"""The ``vision:`` section of a config: encoder, connectors, any-resolution and video settings.

```yaml
vision:
  encoder: {name: timm, model_name: vit_base_patch16_clip_224, feature_layer: -2}
  connector: {name: mlp2x_gelu}            # image tokens
  video_connector: {name: pool, stride: 2} # frame tokens (default: pool, stride 2)
  layout: anyres                           # anyres (LLaVA-NeXT: thumbnail + tile grid) or single
                                           # (LLaVA-1.5: the whole image as one tile, nothing else)
  max_tiles: 4                             # anyres grid limit ... or pinpoints: [[336, 672], ...]
  thumbnail: true                          # anyres: the whole image as one tile before the grid
                                           # (LLaVA-NeXT); false: the tile grid alone
  newline: true                            # a learned embedding at the end of each row of tiles
  unpad: touched                           # padding features dropped: touched (keep any feature that
                                           # saw the image) or llava (LLaVA-NeXT's unpad_image)
  grid_pos: false                          # add fixed 2-D (row, column) cues over the whole tile grid,
                                           # and a frame-number cue to every token of a video frame
  max_pixels: 100000000                    # refuse larger images (decompression bombs)
  max_frames: 8                            # frames sampled per video ...
  fps: null                                # ... or at this rate (capped by max_frames)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .registry import Registry
from .schema import check_options, component_options, describe
from .suggest import unknown
from .vision.anyres import UNPAD_RULES

DEFAULT_VIDEO_CONNECTOR = {"name": "pool", "stride": 2}


@dataclass(kw_only=True)
class VisionConfig:
    encoder: dict[str, Any]
    connector: dict[str, Any] = field(default_factory=lambda: {"name": "mlp2x_gelu"})
    video_connector: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_VIDEO_CONNECTOR))
    layout: str = "anyres"
    max_tiles: int | None = 4
    pinpoints: list[list[int]] | None = None
    thumbnail: bool = True
    newline: bool = True
    unpad: str = "touched"
    grid_pos: bool = False
    max_pixels: int = 100_000_000
    max_frames: int | None = 8
    fps: float | None = None


LAYOUTS = ("anyres", "single")
COMPONENTS = ("encoder", "connector", "video_connector")  # checked against their own constructors
_POSITIVE = ("max_tiles", "max_pixels", "max_frames", "fps")


def parse_vision(raw: Any, registry: Registry, d_model: int | None, problems: list[str]) -> VisionConfig | None:
    """Validate the ``vision:`` mapping; problems are appended with their YAML paths."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(f"vision: expected a mapping, got {describe(raw)}")
        return None
    encoder = _component(raw.get("encoder"), "vision.encoder", "encoder", registry, problems, ())
    settings = _settings(raw, problems)
    out_dim = _encoder_out_dim(registry, encoder)
    connectors = {}
    for key, default in (("connector", {"name": "mlp2x_gelu"}), ("video_connector", DEFAULT_VIDEO_CONNECTOR)):
        args = (d_model,) if d_model is not None and out_dim is not None else None
        connectors[key] = _component(raw.get(key, default), f"vision.{key}", "connector", registry, problems, args,
                                     provided={"in_dim": out_dim or 1})
    if encoder is None or any(c is None for c in connectors.values()):
        return None
    return VisionConfig(encoder=encoder, **connectors, **settings)


def _component(raw, path, kind, registry, problems, build_args, provided=None) -> dict | None:
    if not isinstance(raw, dict) or "name" not in raw:
        problems.append(f"{path}: expected a mapping with a 'name' ({kind}s: {', '.join(registry.names(kind))}), "
                        f"got {describe(raw)}")
        return None
    name = raw["name"]
    if not isinstance(name, str) or (kind, name) not in registry:
        problems.append(f"{path}.name: {unknown(kind, name, registry.names(kind))}")
        return None
    options = {k: v for k, v in raw.items() if k != "name"}
    resolved = component_options(registry.get(kind, name), options, path, problems, build_args=build_args, provided=provided)
    return {"name": name, **resolved}


def _settings(raw: dict, problems: list[str]) -> dict[str, Any]:
    """The section's settings (every field but the components), checked against `VisionConfig`."""
    settings = {k: v for k, v in raw.items() if k not in COMPONENTS}
    out, found = check_options(VisionConfig, {**settings, "encoder": {}}, "vision", noun="key")
    problems.extend(found)
    out = {k: v for k, v in out.items() if k not in COMPONENTS and k in settings}
    for key, value in out.items():
        if value is not None and key in _POSITIVE and not value > 0:
            problems.append(f"vision.{key}: must be > 0, got {value}")
    if out.get("unpad", UNPAD_RULES[0]) not in UNPAD_RULES:
        problems.append(f"vision.unpad: {out['unpad']!r} is not a rule; use touched (keep every feature that saw the "
                        "image) or llava (LLaVA-NeXT's unpad_image)")
    if out.get("layout", LAYOUTS[0]) not in LAYOUTS:
        problems.append(f"vision.layout: {out['layout']!r} is not a layout; use anyres (thumbnail + tile grid) or "
                        "single (the whole image as one tile)")
    if out.get("pinpoints") and raw.get("max_tiles") is not None:
        problems.append("vision.pinpoints: give either pinpoints or max_tiles, not both")
    if out.get("pinpoints"):
        out["max_tiles"] = None
    if out.get("layout") == "single" and out.get("thumbnail") is False:
        problems.append("vision.thumbnail: false leaves a single-layout image no tokens (its one view is the "
                        "thumbnail); remove it, or use layout: anyres")
    if "max_tiles" in raw and raw["max_tiles"] is None and not out.get("pinpoints"):
        problems.append("vision.max_tiles: null needs pinpoints")
    return out


def _encoder_out_dim(registry: Registry, encoder: dict | None) -> int | None:
    """Build the encoder on the meta device to learn its feature width (no weights allocated)."""
    if encoder is None:
        return None
    options = {k: v for k, v in encoder.items() if k != "name"}
    try:
        return registry.get("encoder", encoder["name"])(**options, device="meta").out_dim
    except Exception:  # already reported by the option check
        return None
