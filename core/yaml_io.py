"""Reading a user's YAML file safely: plain data only, no duplicate keys, no alias bombs.

`read_yaml` is the one door YAML files come in by. It uses PyYAML's safe loader (no
Python objects: a ``!!python/object`` tag is an error), refuses a key given twice in one
mapping (PyYAML would silently keep the last one), and refuses documents whose aliases
expand to more than `MAX_VALUES` values (a "billion laughs" file is a few hundred bytes
that every later step, even printing an error, would have to walk in full).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MAX_VALUES = 1_000_000  # the largest real config holds a few thousand


class _StrictSafeLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (``<<`` merges may override)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice in this mapping; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | os.PathLike) -> Any:
    """The parsed document at `path`; a `ConfigError` naming the file, line and problem otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found: check the path"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), [f"cannot read the file: {e}"]) from None
    try:
        raw = yaml.load(text, Loader=_StrictSafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [_yaml_problem(e)]) from None
    if _count_values(raw, MAX_VALUES) > MAX_VALUES:
        problem = (f"the document expands to more than {MAX_VALUES:,} values through its aliases (*name); "
                   "write the values out instead of nesting aliases")
        raise ConfigError(str(path), [problem])
    return raw


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error)
    if isinstance(error, yaml.constructor.ConstructorError) and "constructor for the tag" in problem:
        return (f"YAML tag not allowed{where}: {problem}; configs hold plain data only (no !!python tags), "
                "remove the tag")
    kind = "YAML error" if isinstance(error, yaml.constructor.ConstructorError) else "YAML syntax error"
    return f"{kind}{where}: {problem}"


def _count_values(value: Any, budget: int) -> int:
    """Values in `value` with every alias expanded, counting no further than just past `budget`."""
    count, stack = 0, [value]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count
