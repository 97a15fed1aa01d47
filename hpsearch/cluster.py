"""Offline checks of a Ray cluster-launcher file, before `ray up` spends money on it.

    hpsearch check-cluster cluster.yaml

`check_cluster_file` reads the file, validates it and returns a `ClusterSummary` (node types,
their resources and worker bounds, the most GPUs the cluster can reach, warnings). The first
problem found raises `ConfigError` with one line, `<file>: <key path> (line N): <problem>; <fix>`.
Nothing here calls a cloud API, so a file that passes can still fail in `ray up` on
credentials, quotas or capacity.

The checks, in order:

1. YAML: parses with a safe loader; no key appears twice in one mapping (plain `yaml.safe_load`
   keeps the last one silently); the top level is a mapping.
2. Ray's own JSON Schema, `ray/autoscaler/ray-schema.json` from the installed ray (draft-07),
   the one `ray up` applies: required `cluster_name` and `provider`, no unknown keys, types
   and minimums. Of all violations the most relevant one (`jsonschema.best_match`) is reported.
3. Rules the schema cannot express:
   - `provider.type` is a provider Ray knows (else `ray up` fails with "Unsupported node
     provider"); `external` needs `provider.module`.
   - `head_node_type` is set when `available_node_types` is, and names one of them (Ray's
     `validate_config` rule).
   - Per node type, `min_workers` and `max_workers` are >= 0 (the schema does not say) and
     `min_workers <= max_workers` (Ray would launch the minimum and then scale it back down).
   - The `min_workers` of all types add up to at most the global `max_workers` (Ray's rule;
     the provider's default stands in when `max_workers` is not set).
   - Stricter than Ray: the `max_workers` written on node types add up to at most the global
     `max_workers` when one is given. Ray accepts more but silently stops at the global cap,
     so the file would promise workers (and GPUs) it can never get.
   - AWS node types name an `InstanceType` or a `LaunchTemplate` (Ray reads them to launch).
   - GPUs, judged from the instance type by name (AWS `g*`/`gr*`/`p*` families, GCP `a2`/`a3`/
     `a4`/`g2`/`g4` machine types or `guestAccelerators`, Azure `Standard_N*` sizes):
     a GPU instance must declare a `GPU` resource, since the autoscaler schedules GPU trials
     by the declared resources (only AWS fills it in, and only at `ray up` time); a `GPU`
     resource on a known CPU-only type is refused (trials would land there and find no CUDA);
     and where the GPU count of a type is known, no more than that may be declared. Types
     the tables do not know (Trainium, Inferentia, custom providers) are left alone.

Warnings (reported, never fatal): the dashboard or TensorBoard bound to a non-loopback
address; `GPU: 0` on a GPU instance (paying for an idle GPU); more CPUs declared than the
instance has; the head as the only GPU node (trials would compete with the Tune driver);
no GPUs anywhere; global `max_workers` left to the provider default; no node types (the
provider's default CPU nodes); start commands that never run `ray start`.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import ipaddress
import json
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import ConfigError

__all__ = ["ClusterSummary", "NodeTypeSummary", "check_cluster_file"]

# Provider types Ray's cluster launcher accepts (ray/autoscaler/_private/providers.py, plus
# `external` and `kuberay` which it handles before looking up defaults).
KNOWN_PROVIDERS = (
    "aws", "gcp", "azure", "aliyun", "vsphere", "local", "external", "kuberay", "readonly",
    "spark", "fake_multinode", "fake_multinode_docker",
)  # fmt: skip

_KeyPath = tuple[Any, ...]


# --------------------------------------------------------------------------------------------
# Public results


@dataclass(frozen=True)
class NodeTypeSummary:
    """One entry of `available_node_types`, with Ray's defaults for worker bounds filled in.

    Attributes:
        name: The node type's key.
        instance_type: Instance/machine type/VM size, if the provider config names one.
        resources: The declared resources (`CPU`, `GPU`, custom ones).
        min_workers: Workers of this type kept running (default 0).
        max_workers: Most workers of this type; when not written, Ray's default: 0 for the
            head type, the global `max_workers` for the others.
        is_head: Whether this is the `head_node_type`.
    """

    name: str
    instance_type: str | None
    resources: Mapping[str, int]
    min_workers: int
    max_workers: int
    is_head: bool

    @property
    def gpus(self) -> int:
        """GPUs one node of this type advertises."""
        return int(self.resources.get("GPU", 0))


@dataclass(frozen=True)
class ClusterSummary:
    """What a valid cluster file describes.

    Attributes:
        path: The file checked.
        cluster_name: `cluster_name`.
        provider_type: `provider.type` (aws, gcp, azure, ...).
        region: `provider.region` (or GCP/Azure location), if given.
        head_node_type: The head's node type, or None when the file has no node types.
        node_types: The node types in file order.
        max_workers: Global cap on worker nodes: as written, else the provider default,
            else None (unknown).
        total_max_gpus: GPUs with the head and the most workers the caps allow, filled
            GPU-richest type first.
        warnings: Non-fatal findings, one line each.
    """

    path: Path
    cluster_name: str
    provider_type: str
    region: str | None
    head_node_type: str | None
    node_types: tuple[NodeTypeSummary, ...]
    max_workers: int | None
    total_max_gpus: int
    warnings: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """A short human-readable report (what `hpsearch check-cluster` prints)."""
        where = f", region {self.region}" if self.region else ""
        cap = "unknown" if self.max_workers is None else str(self.max_workers)
        lines = [
            f"{self.path}: OK - cluster {self.cluster_name!r} on {self.provider_type}{where}",
            f"  max workers: {cap}; GPUs at full scale: {self.total_max_gpus}",
        ]
        for nt in self.node_types:
            res = ", ".join(f"{k}: {v}" for k, v in nt.resources.items()) or "auto-detected"
            role = "head, " if nt.is_head else ""
            inst = nt.instance_type or "?"
            lines.append(
                f"  {nt.name} ({role}{inst}): {{{res}}}, "
                f"workers {nt.min_workers}..{nt.max_workers}"
            )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Entry point


def check_cluster_file(path: str | Path) -> ClusterSummary:
    """Validate a Ray cluster-launcher YAML offline and summarise it.

    Args:
        path: The cluster file, e.g. `cluster.yaml`.

    Returns:
        The summary, with non-fatal findings in `warnings`.

    Raises:
        ConfigError: One line, `<file>: <key path> (line N): <problem>; <fix>`, for the first
            problem found (see the module docstring for the rules).
    """
    doc = _Document.read(Path(path))
    _validate_schema(doc)
    return _Checker(doc).run()


# --------------------------------------------------------------------------------------------
# Reading the file


class _StrictLoader(yaml.SafeLoader):
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
                    None, None, f"key {key!r} appears twice (first on line {first})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


@dataclass
class _Document:
    path: Path
    data: dict[str, Any]
    lines: dict[_KeyPath, int]

    @classmethod
    def read(cls, path: Path) -> _Document:
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
            data = yaml.load(text, Loader=_StrictLoader)  # safe: a SafeLoader subclass
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: {_yaml_error(exc)}") from None
        if data is None:
            raise ConfigError(
                f"{path}: the file is empty; write a cluster config with at least "
                "cluster_name and provider (see cluster.yaml in the repository)"
            )
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the top level is a {_yaml_type(data)}, not a mapping; a cluster "
                "file maps keys (cluster_name, provider, available_node_types, ...) to values"
            )
        lines: dict[_KeyPath, int] = {}
        _index_lines(node, (), lines)
        return cls(path=path, data=data, lines=lines)

    def fail(self, key_path: _KeyPath, problem: str, fix: str) -> ConfigError:
        """The one-line error for a problem at `key_path`."""
        where = _format_path(key_path)
        line = self._line_of(key_path)
        at = f" (line {line})" if line else ""
        return ConfigError(f"{self.path}: {where}{at}: {problem}; {fix}")

    def _line_of(self, key_path: _KeyPath) -> int | None:
        for n in range(len(key_path), 0, -1):  # nearest ancestor that is in the file
            line = self.lines.get(tuple(str(k) for k in key_path[:n]))
            if line:
                return line
        return None


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"invalid YAML: {problem}; fix the syntax"
    return (
        f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}; "
        "fix the syntax there (indentation, a missing ':' or an unclosed quote or bracket)"
    )


def _index_lines(node: yaml.Node, path: _KeyPath, out: dict[_KeyPath, int]) -> None:
    """Record the line of every mapping key and sequence item, by key path (as strings)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = (*path, str(key_node.value))
            out.setdefault(sub, key_node.start_mark.line + 1)
            _index_lines(value_node, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, str(i))
            out.setdefault(sub, item.start_mark.line + 1)
            _index_lines(item, sub, out)


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _format_path(key_path: _KeyPath) -> str:
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


def _yaml_type(value: Any) -> str:
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


# --------------------------------------------------------------------------------------------
# Ray's schema


def _ray_autoscaler_dir() -> Path:
    """`ray/autoscaler` of the installed ray, found without importing ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "ray is not installed, so its cluster schema cannot be read; "
            "run `pip install 'ray[default]'` (or `pip install -e .` in this repository)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "autoscaler"


@functools.lru_cache(maxsize=1)
def _ray_schema() -> dict[str, Any]:
    schema_path = _ray_autoscaler_dir() / "ray-schema.json"
    if not schema_path.is_file():
        raise ConfigError(
            f"{schema_path} is missing from the installed ray; reinstall it with "
            "`pip install --force-reinstall 'ray[default]'`"
        )
    with schema_path.open(encoding="utf-8") as fh:
        return json.load(fh)


@functools.cache
def _provider_default_max_workers(provider_type: str) -> int | None:
    """`max_workers` of Ray's defaults.yaml for this provider, which fills a missing one."""
    for sub in (provider_type, f"_private/{provider_type}"):
        defaults = _ray_autoscaler_dir() / sub / "defaults.yaml"
        if defaults.is_file():
            with defaults.open(encoding="utf-8") as fh:
                value = (yaml.safe_load(fh) or {}).get("max_workers")
            return value if isinstance(value, int) else None
    return None


_JSON_TO_YAML = {"object": "mapping", "array": "list", "null": "empty value"}

_SCHEMA_FIX = {
    "type": "write a value of that type",
    "minimum": "use a larger value",
    "enum": "use one of the allowed values",
}


def _validate_schema(doc: _Document) -> None:
    import jsonschema

    schema = _ray_schema()
    validator = jsonschema.Draft7Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc.data))
    if error is None:
        return
    path: _KeyPath = tuple(error.absolute_path)
    kind = error.validator
    if kind == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance][0]
        desc = error.schema.get("properties", {}).get(missing, {}).get("description", "")
        hint = f" ({desc.rstrip('.')})" if desc else ""
        raise doc.fail((*path, missing), "required key is missing", f"add `{missing}:`{hint}")
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed][0]
        close = difflib.get_close_matches(str(extra), allowed, n=1)
        fix = (
            f"did you mean `{close[0]}`?"
            if close
            else f"remove it; keys allowed here: {', '.join(allowed)}"
        )
        raise doc.fail((*path, extra), "unknown key (Ray's schema allows no extra keys here)", fix)
    if kind == "type":
        wanted = error.validator_value
        names = [
            _JSON_TO_YAML.get(t, t) for t in (wanted if isinstance(wanted, list) else [wanted])
        ]
        expected = " or ".join(names)
        article = "an" if expected[0] in "aeiou" else "a"
        got = _yaml_type(error.instance)
        raise doc.fail(
            path,
            f"expected {expected}, got {got} {error.instance!r}",
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
    fix = _SCHEMA_FIX.get(str(kind), "see ray/autoscaler/ray-schema.json for what is allowed")
    raise doc.fail(path, message, fix)


# --------------------------------------------------------------------------------------------
# Hardware heuristics (by instance name; no cloud API calls)


@dataclass(frozen=True)
class _Hardware:
    kind: str  # "gpu", "cpu" or "unknown"
    gpus: int | None = None  # GPUs per node, when known
    vcpus: int | None = None  # vCPUs per node, when known


_UNKNOWN = _Hardware("unknown")

# AWS families: GPUs (NVIDIA, and AMD on g4ad) / CPU only. Trainium, Inferentia, Gaudi (dl*),
# FPGA (f*) and video (vt*) accelerators are neither: no rule applies to them.
_AWS_GPU_FAMILY = re.compile(r"^(?:p|g|gr)\d")
_AWS_CPU_FAMILY = re.compile(r"^(?:a|c|d|h|i|im|is|m|r|t|u|x|z|mac)\d")
_ONE_GPU_SIZES = {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1}
_G5_LIKE = {**_ONE_GPU_SIZES, "12xlarge": 4, "24xlarge": 4, "48xlarge": 8}
_AWS_GPU_COUNTS: dict[str, dict[str, int]] = {
    "g4dn": {**_ONE_GPU_SIZES, "12xlarge": 4, "metal": 8},
    "g5": _G5_LIKE,
    "g6": _G5_LIKE,
    "g6e": _G5_LIKE,
    "p3": {"2xlarge": 1, "8xlarge": 4, "16xlarge": 8},
    "p3dn": {"24xlarge": 8},
    "p4d": {"24xlarge": 8},
    "p4de": {"24xlarge": 8},
    "p5": {"4xlarge": 1, "48xlarge": 8},
    "p5e": {"48xlarge": 8},
    "p5en": {"48xlarge": 8},
}
_AWS_SIZE = re.compile(r"^(\d*)xlarge$")

_GCP_GPU_FAMILIES = {"a2", "a3", "a4", "g2", "g4"}
_GCP_CPU_FAMILIES = {
    "e2", "n1", "n2", "n2d", "n4", "c2", "c2d", "c3", "c3d", "c4", "c4a", "c4d", "t2a", "t2d",
    "m1", "m2", "m3", "m4", "h3", "f1", "g1",
}  # fmt: skip
_GCP_G2_GPUS = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}

_AZURE_GPU = re.compile(r"^Standard_N[CDGV]", re.IGNORECASE)
_AZURE_CPU = re.compile(r"^Standard_[ABDEFHLM]", re.IGNORECASE)


def _instance_type(provider: str, node_config: Mapping[str, Any]) -> str | None:
    if provider == "aws":
        value = node_config.get("InstanceType")
    elif provider == "gcp":
        value = node_config.get("machineType")
    elif provider == "azure":
        arm = node_config.get("azure_arm_parameters")
        value = arm.get("vmSize") if isinstance(arm, Mapping) else None
    else:
        value = None
    return value if isinstance(value, str) else None


def _hardware(provider: str, instance: str | None, node_config: Mapping[str, Any]) -> _Hardware:
    if provider == "aws" and instance:
        return _aws_hardware(instance)
    if provider == "gcp":
        return _gcp_hardware(instance, node_config)
    if provider == "azure" and instance:
        if _AZURE_GPU.match(instance):
            return _Hardware("gpu")
        if _AZURE_CPU.match(instance):
            return _Hardware("cpu")
    return _UNKNOWN


def _aws_hardware(instance: str) -> _Hardware:
    family, _, size = instance.partition(".")
    match = _AWS_SIZE.match(size)
    vcpus = None
    if size == "large":
        vcpus = 2
    elif match:
        vcpus = 4 * int(match.group(1) or 1)
    if _AWS_GPU_FAMILY.match(family):
        return _Hardware("gpu", _AWS_GPU_COUNTS.get(family, {}).get(size), vcpus)
    if _AWS_CPU_FAMILY.match(family):
        return _Hardware("cpu", 0, vcpus)
    return _UNKNOWN


def _gcp_hardware(machine: str | None, node_config: Mapping[str, Any]) -> _Hardware:
    attached = node_config.get("guestAccelerators")
    attached_gpus = 0
    if isinstance(attached, list):
        for acc in attached:
            if isinstance(acc, Mapping):
                count = acc.get("acceleratorCount", 1)
                attached_gpus += count if isinstance(count, int) else 1
    family = machine.split("-")[0] if machine else ""
    if family in _GCP_GPU_FAMILIES:
        built_in = None
        suffix = re.search(r"-(\d+)g$", machine or "")
        if suffix:
            built_in = int(suffix.group(1))
        elif family == "g2":
            vcpu_match = re.search(r"-(\d+)$", machine or "")
            built_in = _GCP_G2_GPUS.get(int(vcpu_match.group(1))) if vcpu_match else None
        return _Hardware("gpu", built_in)
    if attached_gpus:
        return _Hardware("gpu", attached_gpus)
    if family in _GCP_CPU_FAMILIES:
        return _Hardware("cpu", 0)
    return _UNKNOWN


# --------------------------------------------------------------------------------------------
# Cross-field rules


def _is_loopback(host: str) -> bool:
    host = host.strip("'\"[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_CLOUDS = ("aws", "gcp", "azure", "aliyun", "vsphere")  # providers with default node types

_COMMAND_KEYS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
)  # fmt: skip


class _Checker:
    """The rules the schema cannot express, over a schema-valid document."""

    def __init__(self, doc: _Document) -> None:
        self.doc = doc
        self.data = doc.data
        self.provider: dict[str, Any] = self.data["provider"]
        self.provider_type: str = self.provider["type"]
        self.warnings: list[str] = []

    def run(self) -> ClusterSummary:
        self._check_provider()
        cap = self._global_max_workers()
        node_types = self._check_node_types(cap)
        self._check_worker_totals(node_types, cap)
        self._check_commands()
        if node_types and not any(nt.gpus for nt in node_types):
            self.warnings.append("no node type declares a GPU resource: every trial trains on CPU")
        head = self.data.get("head_node_type") if node_types else None
        region = self.provider.get("region") or self.provider.get("location")
        return ClusterSummary(
            path=self.doc.path,
            cluster_name=self.data["cluster_name"],
            provider_type=self.provider_type,
            region=region if isinstance(region, str) else None,
            head_node_type=head,
            node_types=tuple(node_types),
            max_workers=cap,
            total_max_gpus=_total_max_gpus(node_types, cap),
            warnings=tuple(self.warnings),
        )

    # -- provider -------------------------------------------------------------------------

    def _check_provider(self) -> None:
        kind = self.provider_type
        if kind not in KNOWN_PROVIDERS:
            close = difflib.get_close_matches(kind, KNOWN_PROVIDERS, n=1)
            fix = (
                f"did you mean `{close[0]}`?"
                if close
                else "use one of " + ", ".join(KNOWN_PROVIDERS)
            )
            raise self.doc.fail(
                ("provider", "type"), f"Ray has no node provider called {kind!r}", fix
            )
        if kind == "external" and not isinstance(self.provider.get("module"), str):
            raise self.doc.fail(
                ("provider", "module"),
                "an external provider needs the import path of its NodeProvider class",
                "add `module: my_package.my_module.MyNodeProvider` under provider",
            )

    def _global_max_workers(self) -> int | None:
        if "max_workers" in self.data:
            return int(self.data["max_workers"])
        default = _provider_default_max_workers(self.provider_type)
        if default is not None:
            self.warnings.append(
                f"max_workers is not set, so Ray uses the {self.provider_type} default of "
                f"{default} workers; set it to the number you mean"
            )
        return default

    # -- node types -----------------------------------------------------------------------

    def _check_node_types(self, cap: int | None) -> list[NodeTypeSummary]:
        types: dict[str, Any] | None = self.data.get("available_node_types")
        head = self.data.get("head_node_type")
        if types is None:
            if self.provider_type in _CLOUDS:
                self.warnings.append(
                    f"no available_node_types: Ray falls back to the {self.provider_type} "
                    "default node types (small CPU instances, no GPUs); declare the head and "
                    "GPU workers"
                )
            return []
        if not types:
            raise self.doc.fail(
                ("available_node_types",),
                "no node types are declared",
                "declare at least the head node type (resources and node_config)",
            )
        if head is None:
            raise self.doc.fail(
                ("head_node_type",),
                "required when available_node_types is set (Ray refuses the file otherwise)",
                f"add `head_node_type:` naming one of {', '.join(map(str, types))}",
            )
        if head not in types:
            close = difflib.get_close_matches(str(head), [str(t) for t in types], n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise self.doc.fail(
                ("head_node_type",),
                f"{head!r} is not one of available_node_types ({', '.join(map(str, types))})",
                f"set head_node_type to one of them{hint}",
            )
        return [self._check_node_type(str(name), spec, name == head, cap)
                for name, spec in types.items()]  # fmt: skip

    def _check_node_type(
        self, name: str, spec: Mapping[str, Any], is_head: bool, cap: int | None
    ) -> NodeTypeSummary:
        base = ("available_node_types", name)
        for key in ("min_workers", "max_workers"):
            value = spec.get(key)
            if value is not None and value < 0:
                raise self.doc.fail(
                    (*base, key),
                    f"{key} is {value}, but a number of nodes cannot be negative",
                    "use 0 or more",
                )
        lo = int(spec.get("min_workers", 0))
        if "max_workers" in spec:
            hi = int(spec["max_workers"])
        elif is_head:
            hi = 0
        elif cap is not None:
            hi = cap
        else:
            raise self.doc.fail(
                (*base, "max_workers"),
                f"not set, and the {self.provider_type} provider has no default global "
                "max_workers to fall back on",
                "set max_workers on this node type or at the top level",
            )
        if lo > hi:
            source = "" if "max_workers" in spec else " (by default, the global max_workers)"
            raise self.doc.fail(
                (*base, "min_workers"),
                f"min_workers {lo} is larger than max_workers {hi}{source}",
                "lower min_workers or raise max_workers",
            )
        node_config: Mapping[str, Any] = spec["node_config"]
        resources: dict[str, int] = dict(spec["resources"])
        if self.provider_type == "aws" and not (
            "InstanceType" in node_config or "LaunchTemplate" in node_config
        ):
            raise self.doc.fail(
                (*base, "node_config"),
                "names no InstanceType (or LaunchTemplate), so Ray cannot launch this type",
                "add e.g. `InstanceType: g5.xlarge` to node_config",
            )
        instance = _instance_type(self.provider_type, node_config)
        self._check_gpu_resources(base, name, instance, node_config, resources, is_head)
        return NodeTypeSummary(
            name=name, instance_type=instance, resources=resources,
            min_workers=lo, max_workers=hi, is_head=is_head,
        )  # fmt: skip

    def _check_gpu_resources(
        self,
        base: _KeyPath,
        name: str,
        instance: str | None,
        node_config: Mapping[str, Any],
        resources: Mapping[str, int],
        is_head: bool,
    ) -> None:
        hw = _hardware(self.provider_type, instance, node_config)
        label = instance or "this node type"
        declared = resources.get("GPU")
        if hw.kind == "gpu":
            count = f" {hw.gpus}" if hw.gpus else ""
            if declared is None:
                raise self.doc.fail(
                    (*base, "resources"),
                    f"{label} is a GPU instance but resources declares no GPU",
                    f"add `GPU:{count or ' <number of GPUs>'}` so the autoscaler and the "
                    "sweep plan with it (only AWS fills it in, and only during `ray up`)",
                )
            if hw.gpus is not None and declared > hw.gpus:
                raise self.doc.fail(
                    (*base, "resources", "GPU"),
                    f"declares {declared} GPUs but {label} has {hw.gpus}",
                    f"set GPU: {hw.gpus}, or choose an instance type with more GPUs",
                )
            if declared == 0 and not is_head:
                self.warnings.append(
                    f"node type {name}: {label} has GPUs but declares GPU: 0, so they sit idle"
                )
        elif hw.kind == "cpu" and declared:
            raise self.doc.fail(
                (*base, "resources", "GPU"),
                f"{label} has no GPU but resources declares GPU: {declared}; trials placed "
                "there would find no CUDA device",
                "remove GPU from resources, or use a GPU instance type (e.g. g5.xlarge)",
            )
        cpus = resources.get("CPU")
        if hw.vcpus is not None and cpus is not None and cpus > hw.vcpus:
            self.warnings.append(
                f"node type {name}: declares CPU: {cpus} but {label} has {hw.vcpus} vCPUs; "
                "Ray would run more CPU tasks than the machine has cores"
            )

    def _check_worker_totals(self, node_types: Sequence[NodeTypeSummary], cap: int | None) -> None:
        if not node_types:
            return
        if cap is not None:
            total_min = sum(nt.min_workers for nt in node_types)
            if total_min > cap:
                given = "max_workers" in self.data
                raise self.doc.fail(
                    ("max_workers",) if given else ("available_node_types",),
                    f"the node types keep {total_min} workers running (sum of min_workers) but "
                    f"max_workers is {cap}{'' if given else ' (the provider default)'}",
                    f"raise max_workers to at least {total_min} or lower min_workers",
                )
        if "max_workers" in self.data:
            cap_written = int(self.data["max_workers"])
            types = self.data["available_node_types"]
            written = {n: int(s["max_workers"]) for n, s in types.items() if "max_workers" in s}
            total = sum(written.values())
            if total > cap_written:
                parts = ", ".join(f"{n} {v}" for n, v in written.items() if v)
                raise self.doc.fail(
                    ("max_workers",),
                    f"the node types allow {total} workers ({parts}) but max_workers is "
                    f"{cap_written}, where Ray would silently stop",
                    f"raise max_workers to {total} or lower the node types' max_workers",
                )
        gpu_head = any(nt.is_head and nt.gpus for nt in node_types)
        gpu_workers = any(nt.gpus and nt.max_workers for nt in node_types)
        if gpu_head and not gpu_workers:
            self.warnings.append(
                "only the head node has GPUs: trials would share it with the Tune driver and "
                "Ray's services; add a GPU worker type"
            )

    # -- commands -------------------------------------------------------------------------

    def _commands(self) -> Iterator[tuple[_KeyPath, str]]:
        for key in _COMMAND_KEYS:
            for i, cmd in enumerate(self.data.get(key) or []):
                yield (key, i), cmd
        for name, spec in (self.data.get("available_node_types") or {}).items():
            for key in ("initialization_commands", "worker_setup_commands"):
                for i, cmd in enumerate(spec.get(key) or []):
                    yield ("available_node_types", name, key, i), cmd

    def _check_commands(self) -> None:
        for path, cmd in self._commands():
            where = _format_path(path)
            words = _split(cmd)
            for host in _option_values(words, "--dashboard-host"):
                if not _is_loopback(host):
                    self.warnings.append(
                        f"{where}: the Ray dashboard listens on {host}; it runs jobs for "
                        "anyone who reaches port 8265; use --dashboard-host=127.0.0.1 and "
                        "`ray dashboard cluster.yaml`"
                    )
            if "tensorboard" in cmd:
                hosts = _option_values(words, "--host")
                if "--bind_all" in words or any(not _is_loopback(h) for h in hosts):
                    self.warnings.append(
                        f"{where}: TensorBoard is exposed beyond 127.0.0.1; it has no login; "
                        "forward the port over ssh instead"
                    )
        for key, needle in (
            ("head_start_ray_commands", "--head"),
            ("worker_start_ray_commands", "--address"),
        ):
            cmds = self.data.get(key)
            if cmds and not any("ray start" in c and needle in c for c in cmds):
                self.warnings.append(f"{key} never runs `ray start {needle} ...`")


def _split(cmd: str) -> list[str]:
    try:
        return shlex.split(cmd.replace(";", " ; "))
    except ValueError:  # unbalanced quotes: fall back to whitespace
        return cmd.split()


def _option_values(words: Sequence[str], option: str) -> list[str]:
    """Values of `--opt=value` and `--opt value` among shell words."""
    values = []
    for i, word in enumerate(words):
        if word.startswith(option + "="):
            values.append(word.split("=", 1)[1])
        elif word == option and i + 1 < len(words):
            values.append(words[i + 1])
    return values


def _total_max_gpus(node_types: Sequence[NodeTypeSummary], cap: int | None) -> int:
    """GPUs of the head plus the GPU-richest workers the per-type and global caps allow."""
    total = sum(nt.gpus for nt in node_types if nt.is_head)
    budget = cap if cap is not None else sum(nt.max_workers for nt in node_types)
    for nt in sorted(node_types, key=lambda t: t.gpus, reverse=True):
        take = min(nt.max_workers, budget)
        total += take * nt.gpus
        budget -= take
    return total
