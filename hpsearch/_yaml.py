"""The one strict YAML reader for search spaces and cluster files.

`yaml.safe_load` silently keeps the last of two equal keys in one mapping; a search space or a
cluster file that says `lr:` twice almost always hides a mistake, so this loader refuses it.
It is a `yaml.SafeLoader` subclass: no Python objects are ever constructed.

    doc = load_strict(text)   # yaml.YAMLError (a ConstructorError for a repeated key)
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["StrictLoader", "load_strict"]


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: the base class reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (first on line {first})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_strict(text: str) -> Any:
    """Parse YAML text with `StrictLoader`."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
