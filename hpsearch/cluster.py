"""Offline checks of a Ray cluster-launcher file, before `ray up` spends money on it.

    hpsearch check-cluster cluster.yaml

`check_cluster_file` reads the file, validates it and returns a `ClusterSummary` (node types,
their resources and worker bounds, the most GPUs the cluster can reach, warnings). The first
problem found raises `ConfigError` with one line, `<file>: <key path> (line N): <problem>; <fix>`.
Nothing here calls a cloud API, so a file that passes can still fail in `ray up` on
credentials, quotas or capacity.

The checks, in order, each in its own module:

1. `cluster_document`: the file parses with the project's strict YAML loader (no key twice in
   one mapping; plain `yaml.safe_load` keeps the last one silently) and its top level is a
   mapping; every key's line is recorded for the error messages.
2. `cluster_schema`: Ray's own JSON Schema, `ray/autoscaler/ray-schema.json` from the
   installed ray, the one `ray up` applies.
3. `cluster_rules`: the rules the schema cannot express (known provider, head node type,
   worker bounds and totals, GPU resources judged from instance names by `cluster_hardware`),
   and the warnings: services bound beyond loopback (`cluster_commands`), idle or missing
   GPUs, more CPUs declared than the instance has, provider defaults standing in.
"""

from __future__ import annotations

from pathlib import Path

from hpsearch.cluster_document import ClusterDocument
from hpsearch.cluster_rules import check_cluster_rules
from hpsearch.cluster_schema import check_against_ray_schema
from hpsearch.cluster_summary import ClusterSummary, NodeTypeSummary

__all__ = ["ClusterSummary", "NodeTypeSummary", "check_cluster_file"]


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
    doc = ClusterDocument.read(Path(path))
    check_against_ray_schema(doc)
    return check_cluster_rules(doc)
