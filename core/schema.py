"""A component's constructor signature is its schema.

``cls(d_model, *, option: type = default, ..., device=None, dtype=None)``: the keyword-only,
annotated parameters (other than device/dtype) are the options a YAML file may set.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any

from .suggest import did_you_mean

NOT_OPTIONS = {"self", "device", "dtype"}
_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Option:
    name: str
    annotation: Any
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def options_of(cls: type) -> dict[str, Option]:
    """The YAML options of a component class (or config dataclass), in constructor order; a
    dataclass field's ``default_factory`` gives a fresh default per call."""
    hints = typing.get_type_hints(cls.__init__)
    params = inspect.signature(cls.__init__).parameters.values()
    factories = {f.name: f.default_factory for f in dataclasses.fields(cls)
                 if f.default_factory is not dataclasses.MISSING} if dataclasses.is_dataclass(cls) else {}
    return {
        p.name: Option(p.name, hints.get(p.name, Any), factories[p.name]() if p.name in factories else p.default)
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in NOT_OPTIONS
    }


def check_options(cls: type, options: Any, path: str, *, hidden: tuple[str, ...] = (), also: tuple[str, ...] = (),
                  noun: str = "option") -> tuple[dict[str, Any], list[str]]:
    """Validate `options` (a YAML mapping) against `cls`'s schema (a component's constructor,
    or a config section's keyword-only dataclass).

    Returns the options with every default filled in (values coerced where YAML is
    ambiguous, e.g. ``1e-5`` read as a string) and a list of problems, each ``path.option: ...``.
    `hidden` fields are not offered in messages; `also` are further keys the caller checks
    itself (allowed, skipped here); `noun` names a key in messages ("option", "key").
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        return {}, [f"{path}: expected a mapping of {noun}s, got {describe(options)}"]
    schema, problems, resolved = options_of(cls), [], {}
    names = [k for k in schema if k not in hidden] + list(also)
    allowed = ", ".join(names) or "none"
    for key in options:
        if key not in schema and key not in also:
            problems.append(f"{path}.{key}: unknown {noun}.{did_you_mean(key, names)} (allowed: {allowed})")
    for name, option in schema.items():
        if name not in options:
            if option.required:
                problems.append(f"{path}.{name}: required {noun} is missing")
            else:
                resolved[name] = option.default
            continue
        ok, value = coerce(options[name], option.annotation)
        if ok:
            resolved[name] = value
        else:
            problems.append(f"{path}.{name}: expected {type_name(option.annotation)}, got {describe(options[name])}")
    return resolved, problems


def component_options(cls: type, raw: Any, path: str, problems: list[str], *, build_args: tuple | None = None,
                      provided: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check options against `cls`'s constructor; `provided` are filled in by the builder, not
    YAML. With `build_args`, also try building it on the meta device so that cross-option
    checks (n_head | d_model ...) are reported as problems at `path`."""
    provided = provided or {}
    for key in provided:
        if isinstance(raw, dict) and key in raw:
            problems.append(f"{path}.{key}: set automatically; remove it from the YAML")
    raw = {**(raw or {}), **provided} if isinstance(raw, dict) or raw is None else raw
    options, found = check_options(cls, raw, path, hidden=tuple(provided))
    problems.extend(found)
    if build_args is not None and not found:
        try:
            cls(*build_args, **options, device="meta")
        except Exception as e:  # the component's own check, e.g. "n_head (6) must divide d_model (128)"
            problems.append(f"{path}: {e}")
    return {k: v for k, v in options.items() if k not in provided}


def coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(True, value as the annotation wants it) or (False, None). Ints pass as floats; a
    string that parses as a float passes as a float (YAML 1.1 reads ``1e-5`` as a string)."""
    if annotation is Any:
        return True, value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, coerced = coerce(value, arg)
            if ok:
                return True, coerced
        return False, None
    if origin is typing.Literal:
        return (value in args), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, None
        item_type = args[0] if args else Any
        items = [coerce(v, item_type) for v in value]
        return all(ok for ok, _ in items), origin(v for _, v in items)
    if origin is dict or annotation is dict:
        return isinstance(value, dict), value
    return _coerce_scalar(value, annotation)


def _coerce_scalar(value: Any, annotation: Any) -> tuple[bool, Any]:
    if annotation is type(None):
        return value is None, None
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return is_int(value), value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value


def is_int(value: Any) -> bool:
    """An int as YAML gives it (True and False are bools, not ints)."""
    return isinstance(value, int) and not isinstance(value, bool)


def type_name(annotation: Any) -> str:
    """'int', 'int or null', "one of 'a', 'b'", 'list of int' ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def describe(value: Any) -> str:
    """How a YAML value reads in an error: "str 'abc'", 'null', 'list [1, 2]'."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"
