"""A cluster file as read: its data, the line of every key, and one-line errors that cite them.

`ClusterDocument.read` refuses what is not a readable cluster file at all (missing, a folder,
not UTF-8, invalid YAML, a key given twice in one mapping, empty, a top level that is not a
mapping). Every later check reports through `ClusterDocument.fail`, which words the problem as
`<file>: <key path> (line N): <problem>; <fix>`, so the user can jump straight to the line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpsearch._yaml import load_strict
from trainables.errors import ConfigError

__all__ = ["ClusterDocument", "KeyPath", "format_key_path", "yaml_type_name"]

KeyPath = tuple[Any, ...]
"""Keys from the top level down to one value, e.g. `("available_node_types", "gpu", "resources")`."""


@dataclass
class ClusterDocument:
    """The parsed cluster file and where each of its keys sits.

    Attributes:
        path: The file.
        data: Its top-level mapping.
        key_lines: The 1-based line of every mapping key and list item, by key path (every
            key as a string).
    """

    path: Path
    data: dict[str, Any]
    key_lines: dict[KeyPath, int]

    @classmethod
    def read(cls, path: Path) -> ClusterDocument:
        """Parse `path` strictly; `ConfigError` (one line) if it is no YAML mapping."""
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ConfigError(
                f"{path}: {what}; pass a Ray cluster-launcher YAML file such as cluster.yaml"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not UTF-8 text (byte {exc.start}); pass the YAML cluster file"
            ) from None
        try:
            data = load_strict(text)
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: {_describe_yaml_error(exc)}") from None
        if data is None or root is None:
            raise ConfigError(
                f"{path}: the file is empty; write a cluster config with at least "
                "cluster_name and provider (see cluster.yaml in the repository)"
            )
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the top level is a {yaml_type_name(data)}, not a mapping; a cluster "
                "file maps keys (cluster_name, provider, available_node_types, ...) to values"
            )
        key_lines: dict[KeyPath, int] = {}
        _record_key_lines(root, (), key_lines)
        return cls(path=path, data=data, key_lines=key_lines)

    def fail(self, key_path: KeyPath, problem: str, fix: str) -> ConfigError:
        """The one-line error for a problem at `key_path` (raise it)."""
        line = self._line_of(key_path)
        at = f" (line {line})" if line else ""
        return ConfigError(f"{self.path}: {format_key_path(key_path)}{at}: {problem}; {fix}")

    def _line_of(self, key_path: KeyPath) -> int | None:
        """The line of `key_path`, or of its nearest ancestor written in the file."""
        for depth in range(len(key_path), 0, -1):
            line = self.key_lines.get(tuple(str(key) for key in key_path[:depth]))
            if line:
                return line
        return None


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"invalid YAML: {problem}; fix the syntax"
    return (
        f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}; "
        "fix the syntax there (indentation, a missing ':' or an unclosed quote or bracket)"
    )


def _record_key_lines(node: yaml.Node, key_path: KeyPath, out: dict[KeyPath, int]) -> None:
    """Record the line of every mapping key and list item under `node`, by key path."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*key_path, str(key_node.value))
            out.setdefault(child, key_node.start_mark.line + 1)
            _record_key_lines(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*key_path, str(index))
            out.setdefault(child, item.start_mark.line + 1)
            _record_key_lines(item, child, out)


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_key_path(key_path: KeyPath) -> str:
    """`available_node_types.gpu_worker.resources`; odd keys as `["ray.head.default"]`."""
    if not key_path:
        return "(top level)"
    out = ""
    for key in key_path:
        if isinstance(key, int):
            out += f"[{key}]"
        elif _PLAIN_KEY.match(str(key)):
            out += f".{key}" if out else str(key)
        else:
            out += f"[{json.dumps(str(key))}]"
    return out


def yaml_type_name(value: object) -> str:
    """What YAML calls the type of a parsed value (`mapping`, `list`, `integer`, ...)."""
    if value is None:
        return "null (empty value)"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__
