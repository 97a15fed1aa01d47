"""The rules of a cluster file that Ray's schema cannot express, over a schema-valid file.

`check_cluster_rules` refuses, in this order (the first problem raises a one-line
`ConfigError`):

- `provider.type` is not a provider Ray knows (`ray up` would fail with "Unsupported node
  provider"); an `external` provider without `provider.module`.
- `available_node_types` without `head_node_type`, or a `head_node_type` that names none of
  them (Ray's `validate_config` rule); an empty `available_node_types`.
- Per node type: negative `min_workers`/`max_workers` (the schema does not say), or
  `min_workers > max_workers` (Ray would launch the minimum and then scale it back down);
  an AWS node type without `InstanceType` or `LaunchTemplate` (Ray reads them to launch).
- GPUs, judged from the instance type by name (`hpsearch.cluster_hardware`): a GPU instance
  must declare a `GPU` resource, since the autoscaler schedules GPU trials by the declared
  resources (only AWS fills it in, and only at `ray up` time); a `GPU` resource on a known
  CPU-only type is refused (trials would land there and find no CUDA); and where the GPU
  count of a type is known, no more than that may be declared.
- The `min_workers` of all types add up to more than the global `max_workers` (Ray's rule;
  the provider's default stands in when `max_workers` is not set).
- Stricter than Ray: the `max_workers` written on node types add up to more than the global
  `max_workers` when one is given. Ray accepts it but silently stops at the global cap, so
  the file would promise workers (and GPUs) it can never get.

and collects warnings: `GPU: 0` on a GPU instance, more CPUs declared than the instance has,
the head as the only GPU node, no GPUs anywhere, the global `max_workers` left to the
provider default, no node types at all, and those of `hpsearch.cluster_commands`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from hpsearch.cluster_commands import command_warnings
from hpsearch.cluster_document import ClusterDocument, KeyPath
from hpsearch.cluster_hardware import hardware_of, instance_type_of
from hpsearch.cluster_schema import provider_default_max_workers
from hpsearch.cluster_summary import ClusterSummary, NodeTypeSummary, total_max_gpus

__all__ = ["KNOWN_PROVIDERS", "check_cluster_rules"]

# Provider types Ray's cluster launcher accepts (ray/autoscaler/_private/providers.py, plus
# `external` and `kuberay` which it handles before looking up defaults).
KNOWN_PROVIDERS = (
    "aws", "gcp", "azure", "aliyun", "vsphere", "local", "external", "kuberay", "readonly",
    "spark", "fake_multinode", "fake_multinode_docker",
)  # fmt: skip

_CLOUDS = ("aws", "gcp", "azure", "aliyun", "vsphere")  # providers with default node types


def check_cluster_rules(doc: ClusterDocument) -> ClusterSummary:
    """Apply the cross-field rules to a schema-valid file and summarise it, with warnings."""
    return _RuleChecker(doc).run()


class _RuleChecker:
    """One pass over a schema-valid document, collecting warnings as it goes."""

    def __init__(self, doc: ClusterDocument) -> None:
        self.doc = doc
        self.data = doc.data
        self.provider: dict[str, Any] = self.data["provider"]
        self.provider_type: str = self.provider["type"]
        self.warnings: list[str] = []

    def run(self) -> ClusterSummary:
        """Every rule in order; the summary of the file, or the first problem raised."""
        self._check_provider()
        global_max = self._global_max_workers()
        node_types = self._check_node_types(global_max)
        self._check_worker_totals(node_types, global_max)
        self.warnings.extend(command_warnings(self.data))
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
            max_workers=global_max,
            total_max_gpus=total_max_gpus(node_types, global_max),
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
        default = provider_default_max_workers(self.provider_type)
        if default is not None:
            self.warnings.append(
                f"max_workers is not set, so Ray uses the {self.provider_type} default of "
                f"{default} workers; set it to the number you mean"
            )
        return default

    # -- node types -----------------------------------------------------------------------

    def _check_node_types(self, global_max: int | None) -> list[NodeTypeSummary]:
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
        return [self._check_node_type(str(name), spec, name == head, global_max)
                for name, spec in types.items()]  # fmt: skip

    def _check_node_type(
        self, name: str, spec: Mapping[str, Any], is_head: bool, global_max: int | None
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
        min_workers = int(spec.get("min_workers", 0))
        if "max_workers" in spec:
            max_workers = int(spec["max_workers"])
        elif is_head:
            max_workers = 0
        elif global_max is not None:
            max_workers = global_max
        else:
            raise self.doc.fail(
                (*base, "max_workers"),
                f"not set, and the {self.provider_type} provider has no default global "
                "max_workers to fall back on",
                "set max_workers on this node type or at the top level",
            )
        if min_workers > max_workers:
            source = "" if "max_workers" in spec else " (by default, the global max_workers)"
            raise self.doc.fail(
                (*base, "min_workers"),
                f"min_workers {min_workers} is larger than max_workers {max_workers}{source}",
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
        instance = instance_type_of(self.provider_type, node_config)
        self._check_gpu_resources(base, name, instance, node_config, resources, is_head)
        return NodeTypeSummary(
            name=name, instance_type=instance, resources=resources,
            min_workers=min_workers, max_workers=max_workers, is_head=is_head,
        )  # fmt: skip

    def _check_gpu_resources(
        self,
        base: KeyPath,
        name: str,
        instance: str | None,
        node_config: Mapping[str, Any],
        resources: Mapping[str, int],
        is_head: bool,
    ) -> None:
        hardware = hardware_of(self.provider_type, instance, node_config)
        label = instance or "this node type"
        declared = resources.get("GPU")
        if hardware.kind == "gpu":
            count = f" {hardware.gpus}" if hardware.gpus else ""
            if declared is None:
                raise self.doc.fail(
                    (*base, "resources"),
                    f"{label} is a GPU instance but resources declares no GPU",
                    f"add `GPU:{count or ' <number of GPUs>'}` so the autoscaler and the "
                    "sweep plan with it (only AWS fills it in, and only during `ray up`)",
                )
            if hardware.gpus is not None and declared > hardware.gpus:
                raise self.doc.fail(
                    (*base, "resources", "GPU"),
                    f"declares {declared} GPUs but {label} has {hardware.gpus}",
                    f"set GPU: {hardware.gpus}, or choose an instance type with more GPUs",
                )
            if declared == 0 and not is_head:
                self.warnings.append(
                    f"node type {name}: {label} has GPUs but declares GPU: 0, so they sit idle"
                )
        elif hardware.kind == "cpu" and declared:
            raise self.doc.fail(
                (*base, "resources", "GPU"),
                f"{label} has no GPU but resources declares GPU: {declared}; trials placed "
                "there would find no CUDA device",
                "remove GPU from resources, or use a GPU instance type (e.g. g5.xlarge)",
            )
        cpus = resources.get("CPU")
        if hardware.vcpus is not None and cpus is not None and cpus > hardware.vcpus:
            self.warnings.append(
                f"node type {name}: declares CPU: {cpus} but {label} has {hardware.vcpus} vCPUs; "
                "Ray would run more CPU tasks than the machine has cores"
            )

    def _check_worker_totals(
        self, node_types: Sequence[NodeTypeSummary], global_max: int | None
    ) -> None:
        if not node_types:
            return
        if global_max is not None:
            total_min = sum(nt.min_workers for nt in node_types)
            if total_min > global_max:
                given = "max_workers" in self.data
                raise self.doc.fail(
                    ("max_workers",) if given else ("available_node_types",),
                    f"the node types keep {total_min} workers running (sum of min_workers) but "
                    f"max_workers is {global_max}{'' if given else ' (the provider default)'}",
                    f"raise max_workers to at least {total_min} or lower min_workers",
                )
        if "max_workers" in self.data:
            written_global_max = int(self.data["max_workers"])
            written = {
                name: int(spec["max_workers"])
                for name, spec in self.data["available_node_types"].items()
                if "max_workers" in spec
            }
            total = sum(written.values())
            if total > written_global_max:
                parts = ", ".join(f"{name} {count}" for name, count in written.items() if count)
                raise self.doc.fail(
                    ("max_workers",),
                    f"the node types allow {total} workers ({parts}) but max_workers is "
                    f"{written_global_max}, where Ray would silently stop",
                    f"raise max_workers to {total} or lower the node types' max_workers",
                )
        gpu_head = any(nt.is_head and nt.gpus for nt in node_types)
        gpu_workers = any(nt.gpus and nt.max_workers for nt in node_types)
        if gpu_head and not gpu_workers:
            self.warnings.append(
                "only the head node has GPUs: trials would share it with the Tune driver and "
                "Ray's services; add a GPU worker type"
            )
