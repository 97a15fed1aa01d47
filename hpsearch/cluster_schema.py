"""What the installed Ray's cluster launcher itself demands of a cluster file, and its defaults.

`check_against_ray_schema` applies `ray/autoscaler/ray-schema.json` from the installed ray
(JSON Schema draft-07), the schema `ray up` applies: required `cluster_name` and `provider`, no
unknown keys, types and minimums. Of all violations the most relevant one
(`jsonschema.best_match`) is reported, in the one-line form of `ClusterDocument.fail`.

`provider_default_max_workers` reads the `max_workers` Ray fills in when a file leaves it out.
Both find ray's files without importing ray (which takes seconds).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hpsearch.cluster_document import ClusterDocument, KeyPath, yaml_type_name
from trainables.errors import ConfigError

__all__ = ["check_against_ray_schema", "provider_default_max_workers"]

_JSON_TO_YAML_TYPE = {"object": "mapping", "array": "list", "null": "empty value"}


def check_against_ray_schema(doc: ClusterDocument) -> None:
    """Raise the one-line `ConfigError` for the most relevant schema violation, if any."""
    validator = jsonschema.Draft7Validator(_ray_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc.data))
    if error is None:
        return
    path: KeyPath = tuple(error.absolute_path)
    kind = error.validator
    if kind == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance][0]
        desc = error.schema.get("properties", {}).get(missing, {}).get("description", "")
        hint = f" ({desc.rstrip('.')})" if desc else ""
        raise doc.fail((*path, missing), "required key is missing", f"add `{missing}:`{hint}")
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = [key for key in error.instance if key not in allowed][0]
        close = difflib.get_close_matches(str(extra), allowed, n=1)
        fix = (
            f"did you mean `{close[0]}`?"
            if close
            else f"remove it; keys allowed here: {', '.join(allowed)}"
        )
        raise doc.fail((*path, extra), "unknown key (Ray's schema allows no extra keys here)", fix)
    if kind == "type":
        wanted = error.validator_value
        json_types = wanted if isinstance(wanted, list) else [wanted]
        expected = " or ".join(_JSON_TO_YAML_TYPE.get(str(t), str(t)) for t in json_types)
        article = "an" if expected[0] in "aeiou" else "a"
        raise doc.fail(
            path,
            f"expected {expected}, got {yaml_type_name(error.instance)} {error.instance!r}",
            f"write {article} {expected} here",
        )
    if kind == "minimum":
        raise doc.fail(
            path,
            f"{error.instance!r} is below the minimum {error.validator_value}",
            f"use a value >= {error.validator_value}",
        )
    message = error.message.splitlines()[0]
    if len(message) > 160:
        message = message[:157] + "..."
    fix = (
        "use one of the allowed values"
        if kind == "enum"
        else "see ray/autoscaler/ray-schema.json for what is allowed"
    )
    raise doc.fail(path, message, fix)


@functools.cache
def provider_default_max_workers(provider_type: str) -> int | None:
    """`max_workers` of Ray's defaults.yaml for this provider, which fills a missing one."""
    for folder in (provider_type, f"_private/{provider_type}"):
        defaults = _ray_autoscaler_dir() / folder / "defaults.yaml"
        if defaults.is_file():
            with defaults.open(encoding="utf-8") as fh:
                value = (yaml.safe_load(fh) or {}).get("max_workers")
            return value if isinstance(value, int) else None
    return None


def _ray_autoscaler_dir() -> Path:
    """`ray/autoscaler` of the installed ray, found without importing ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "ray is not installed, so its cluster schema cannot be read; "
            "run `pip install 'ray[default]'` (or `pip install -e .` in this repository)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "autoscaler"


@functools.cache
def _ray_schema() -> dict[str, Any]:
    schema_path = _ray_autoscaler_dir() / "ray-schema.json"
    if not schema_path.is_file():
        raise ConfigError(
            f"{schema_path} is missing from the installed ray; reinstall it with "
            "`pip install --force-reinstall 'ray[default]'`"
        )
    with schema_path.open(encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema
