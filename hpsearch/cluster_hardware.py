"""What hardware a node type's instance type implies, judged by its name (no cloud API calls).

`hardware_of` answers "does this node have GPUs, how many, how many vCPUs?" from the AWS
instance type (`g*`/`gr*`/`p*` families have GPUs), the GCP machine type (`a2`/`a3`/`a4`/`g2`/
`g4`, or `guestAccelerators`) or the Azure VM size (`Standard_N*`). Where the tables do not
know a type (Trainium, Inferentia, custom providers) the answer is `kind="unknown"`, and the
GPU rules leave that node type alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Hardware", "hardware_of", "instance_type_of"]


@dataclass(frozen=True)
class Hardware:
    """What one node of a type has, as far as its instance name tells.

    Attributes:
        kind: "gpu" (has GPUs), "cpu" (has none) or "unknown".
        gpus: GPUs per node, when known.
        vcpus: vCPUs per node, when known.
    """

    kind: Literal["gpu", "cpu", "unknown"]
    gpus: int | None = None
    vcpus: int | None = None


_UNKNOWN = Hardware("unknown")

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


def instance_type_of(provider: str, node_config: Mapping[str, Any]) -> str | None:
    """The instance type (AWS), machine type (GCP) or VM size (Azure) a node_config names."""
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


def hardware_of(provider: str, instance: str | None, node_config: Mapping[str, Any]) -> Hardware:
    """What a node of `instance` on `provider` has (GCP also counts `guestAccelerators`)."""
    if provider == "aws" and instance:
        return _aws_hardware(instance)
    if provider == "gcp":
        return _gcp_hardware(instance, node_config)
    if provider == "azure" and instance:
        if _AZURE_GPU.match(instance):
            return Hardware("gpu")
        if _AZURE_CPU.match(instance):
            return Hardware("cpu")
    return _UNKNOWN


def _aws_hardware(instance: str) -> Hardware:
    family, _, size = instance.partition(".")
    match = _AWS_SIZE.match(size)
    vcpus = None
    if size == "large":
        vcpus = 2
    elif match:
        vcpus = 4 * int(match.group(1) or 1)
    if _AWS_GPU_FAMILY.match(family):
        return Hardware("gpu", _AWS_GPU_COUNTS.get(family, {}).get(size), vcpus)
    if _AWS_CPU_FAMILY.match(family):
        return Hardware("cpu", 0, vcpus)
    return _UNKNOWN


def _gcp_hardware(machine: str | None, node_config: Mapping[str, Any]) -> Hardware:
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
        return Hardware("gpu", built_in)
    if attached_gpus:
        return Hardware("gpu", attached_gpus)
    if family in _GCP_CPU_FAMILIES:
        return Hardware("cpu", 0)
    return _UNKNOWN
