"""What a valid cluster file describes: `ClusterSummary` and its `NodeTypeSummary` entries.

These are the results of `hpsearch.cluster.check_cluster_file`; `ClusterSummary.describe` is
the text `hpsearch check-cluster` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ClusterSummary", "NodeTypeSummary", "total_max_gpus"]


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


def total_max_gpus(node_types: Sequence[NodeTypeSummary], max_workers: int | None) -> int:
    """GPUs of the head plus the GPU-richest workers the per-type and global caps allow."""
    total = sum(nt.gpus for nt in node_types if nt.is_head)
    budget = max_workers if max_workers is not None else sum(nt.max_workers for nt in node_types)
    for nt in sorted(node_types, key=lambda t: t.gpus, reverse=True):
        take = min(nt.max_workers, budget)
        total += take * nt.gpus
        budget -= take
    return total
