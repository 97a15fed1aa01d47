"""check_cluster_file: the shipped cluster.yaml passes; broken variants fail in one line."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpsearch.cluster import ClusterSummary, check_cluster_file
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    with SHIPPED.open() as fh:
        return yaml.safe_load(fh)


def _write(tmp_path: Path, config: Any, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        check_cluster_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# -- the shipped file -----------------------------------------------------------------------


def test_shipped_cluster_file_is_valid() -> None:
    summary = check_cluster_file(SHIPPED)
    assert isinstance(summary, ClusterSummary)
    assert summary.cluster_name == "hpsearch"
    assert summary.provider_type == "aws"
    assert summary.region == "us-west-2"
    assert summary.head_node_type == "cpu_head"
    assert summary.max_workers == 4
    by_name = {nt.name: nt for nt in summary.node_types}
    head, gpu = by_name["cpu_head"], by_name["gpu_worker"]
    assert head.is_head and head.instance_type == "m5.2xlarge"
    assert dict(head.resources) == {"CPU": 8} and head.max_workers == 0
    assert gpu.instance_type == "g5.xlarge"
    assert dict(gpu.resources) == {"CPU": 4, "GPU": 1}
    assert (gpu.min_workers, gpu.max_workers, gpu.gpus) == (0, 4, 1)
    assert summary.total_max_gpus == 4
    assert summary.warnings == ()
    text = summary.describe()
    assert "gpu_worker (g5.xlarge)" in text and "GPUs at full scale: 4" in text


def test_shipped_cluster_file_passes_rays_own_validation(shipped: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(shipped))
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_worker"]["max_workers"] == 4


def test_shipped_cluster_file_keeps_services_on_loopback(shipped: dict[str, Any]) -> None:
    head_start = " ".join(shipped["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    setup = " ".join(shipped["setup_commands"])
    assert "pip install -q -e ~/hpsearch" in setup
    assert "hpsearch data download --dest ~/data/cs224n" in setup


# -- broken variants ------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(*keys: str, value: Any) -> Mutation:
    def mutate(c: dict[str, Any]) -> None:
        for key in keys[:-1]:
            c = c[key]
        c[keys[-1]] = value

    return mutate


def _drop(*keys: str) -> Mutation:
    def mutate(c: dict[str, Any]) -> None:
        for key in keys[:-1]:
            c = c[key]
        del c[keys[-1]]

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(c: dict[str, Any]) -> None:
        for m in mutations:
            m(c)

    return mutate


GPU = ("available_node_types", "gpu_worker")
HEAD = ("available_node_types", "cpu_head")

BROKEN: dict[str, tuple[Mutation, list[str]]] = {
    "missing provider": (_drop("provider"), ["provider: required key is missing"]),
    "missing cluster_name": (_drop("cluster_name"), ["cluster_name: required key is missing"]),
    "unknown top-level key": (
        _set("max_worker", value=4),
        ["max_worker (line", "unknown key", "did you mean `max_workers`"],
    ),
    "unknown key in a node type": (
        _set(*GPU, "max_worker", value=4),
        ["available_node_types.gpu_worker.max_worker", "unknown key"],
    ),
    "head_node_type not a node type": (
        _set("head_node_type", value="cpu_haed"),
        ["head_node_type (line", "'cpu_haed' is not one of", "did you mean `cpu_head`"],
    ),
    "head_node_type missing": (_drop("head_node_type"), ["head_node_type: required when"]),
    "node type without resources": (
        _drop(*GPU, "resources"),
        ["available_node_types.gpu_worker.resources (line", "required key is missing"],
    ),
    "node type without node_config": (
        _drop(*GPU, "node_config"),
        ["available_node_types.gpu_worker.node_config (line", "required key is missing"],
    ),
    "no node types": (_set("available_node_types", value={}), ["no node types are declared"]),
    "min_workers above max_workers": (
        _set(*GPU, "min_workers", value=5),
        ["available_node_types.gpu_worker.min_workers", "min_workers 5 is larger than max"],
    ),
    "negative global max_workers": (
        _set("max_workers", value=-1),
        ["max_workers (line", "below the minimum 0", "use a value >= 0"],
    ),
    "negative node type max_workers": (
        _set(*GPU, "max_workers", value=-2),
        ["available_node_types.gpu_worker.max_workers", "cannot be negative"],
    ),
    "node type maxima above global max_workers": (
        _set(*GPU, "max_workers", value=6),
        ["max_workers (line", "allow 6 workers", "raise max_workers to 6"],
    ),
    "min_workers of all types above global max_workers (Ray's rule)": (
        _both(
            _drop(*GPU, "max_workers"),
            _set(*GPU, "min_workers", value=3),
            lambda c: c["available_node_types"].update(spare=copy.deepcopy(c[GPU[0]][GPU[1]])),
            _set("available_node_types", "spare", "min_workers", value=2),
        ),
        ["max_workers (line", "keep 5 workers running", "raise max_workers to at least 5"],
    ),
    "GPU instance without a GPU resource": (
        _set(*GPU, "resources", value={"CPU": 4}),
        ["available_node_types.gpu_worker.resources", "g5.xlarge is a GPU instance", "GPU: 1"],
    ),
    "GPU resource on a CPU instance type": (
        _set(*HEAD, "resources", value={"CPU": 8, "GPU": 1}),
        ["available_node_types.cpu_head.resources.GPU", "m5.2xlarge has no GPU"],
    ),
    "more GPUs than the instance has": (
        _set(*GPU, "resources", "GPU", value=4),
        ["available_node_types.gpu_worker.resources.GPU", "declares 4 GPUs but g5.xlarge has 1"],
    ),
    "max_workers not a number": (
        _set("max_workers", value="many"),
        ["max_workers (line", "expected integer, got string 'many'", "write an integer"],
    ),
    "fractional resource": (
        _set(*GPU, "resources", "GPU", value=0.5),
        ["available_node_types.gpu_worker.resources.GPU", "expected integer, got number 0.5"],
    ),
    "provider type misspelt": (
        _set("provider", "type", value="awss"),
        ["provider.type (line", "no node provider called 'awss'", "did you mean `aws`"],
    ),
    "provider not a mapping": (
        _set("provider", value="aws"),
        ["provider (line", "expected mapping, got string 'aws'", "write a mapping"],
    ),
    "AWS node type without an instance type": (
        _drop(*GPU, "node_config", "InstanceType"),
        ["available_node_types.gpu_worker.node_config", "InstanceType"],
    ),
    "external provider without module": (
        _set("provider", value={"type": "external"}),
        ["provider.module", "needs the import path"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_variant_is_refused(case: str, shipped: dict[str, Any], tmp_path: Path) -> None:
    mutate, expected = BROKEN[case]
    config = copy.deepcopy(shipped)
    mutate(config)
    message = _refusal(_write(tmp_path, config))
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "; " in message  # a fix follows the problem


@pytest.mark.parametrize(
    "case",
    [
        "head_node_type not a node type",
        "unknown top-level key",
        "missing provider",
        "min_workers of all types above global max_workers (Ray's rule)",
    ],
)
def test_ray_itself_refuses_what_we_refuse(case: str, shipped: dict[str, Any]) -> None:
    """The rules taken from Ray agree with Ray's own validate_config."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = copy.deepcopy(shipped)
    BROKEN[case][0](config)
    config["cluster_synced_files"] = []
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        validate_config(config)


def test_error_names_the_line(shipped: dict[str, Any], tmp_path: Path) -> None:
    config = copy.deepcopy(shipped)
    config["head_node_type"] = "nowhere"
    path = _write(tmp_path, config)
    line = next(
        i for i, text in enumerate(path.read_text().splitlines(), 1)
        if text.startswith("head_node_type:")
    )  # fmt: skip
    assert f"head_node_type (line {line}):" in _refusal(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cluster_name: x\nprovider: {type: aws\n", "invalid YAML"),
        ("cluster_name: x\n  provider:\n    type: aws\n", "line 2"),
        ("- cluster_name: x\n- provider: {type: aws}\n", "top level is a list, not a mapping"),
        ("", "the file is empty"),
        ("cluster_name: a\nprovider: {type: aws}\ncluster_name: b\n", "appears twice"),
        ("cluster_name: a\nprovider: {type: aws, type: gcp}\n", "key 'type' appears twice"),
    ],
    ids=["unclosed-bracket", "bad-indentation", "list", "empty", "duplicate-key", "dup-flow"],
)
def test_unreadable_yaml_is_refused(text: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    assert expected in _refusal(path)


def test_duplicate_key_error_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster_name: a\nprovider: {type: aws}\ncluster_name: b\n")
    message = _refusal(path)
    assert "line 3" in message and "first on line 1" in message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        check_cluster_file(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        check_cluster_file(tmp_path)


# -- warnings and summaries -----------------------------------------------------------------


def test_warnings_are_collected_not_fatal(shipped: dict[str, Any], tmp_path: Path) -> None:
    config = copy.deepcopy(shipped)
    config["head_start_ray_commands"][1] = config["head_start_ray_commands"][1].replace(
        "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"
    )
    config["setup_commands"].append("nohup tensorboard --logdir ~/results --bind_all &")
    config["available_node_types"]["gpu_worker"]["resources"]["CPU"] = 16
    del config["max_workers"]
    del config["available_node_types"]["gpu_worker"]["max_workers"]
    summary = check_cluster_file(_write(tmp_path, config))
    text = "\n".join(summary.warnings)
    assert "dashboard listens on 0.0.0.0" in text
    assert "TensorBoard is exposed" in text
    assert "declares CPU: 16 but g5.xlarge has 4 vCPUs" in text
    assert "aws default of 2 workers" in text
    assert summary.max_workers == 2  # Ray's AWS default fills in
    gpu = next(nt for nt in summary.node_types if nt.name == "gpu_worker")
    assert gpu.max_workers == 2 and summary.total_max_gpus == 2
    assert "warning: " in summary.describe()


def test_gpu_only_on_head_warns(tmp_path: Path) -> None:
    config = {
        "cluster_name": "solo",
        "max_workers": 0,
        "provider": {"type": "aws", "region": "us-east-1"},
        "available_node_types": {
            "head": {"resources": {"CPU": 4, "GPU": 1}, "node_config": {"InstanceType": "g5.xlarge"}},
        },
        "head_node_type": "head",
    }  # fmt: skip
    summary = check_cluster_file(_write(tmp_path, config))
    assert summary.total_max_gpus == 1
    assert any("only the head node has GPUs" in w for w in summary.warnings)


def test_total_gpus_fill_richest_type_first(tmp_path: Path) -> None:
    config = {
        "cluster_name": "mixed",
        "max_workers": 3,
        "provider": {"type": "aws", "region": "us-east-1"},
        "available_node_types": {
            "head": {"resources": {"CPU": 8}, "node_config": {"InstanceType": "m5.2xlarge"}},
            "quad": {"resources": {"GPU": 4}, "node_config": {"InstanceType": "g5.12xlarge"}},
            "single": {"resources": {"GPU": 1}, "node_config": {"InstanceType": "g6.xlarge"}},
        },
        "head_node_type": "head",
    }
    summary = check_cluster_file(_write(tmp_path, config))
    # Unwritten per-type maxima default to the global 3; all 3 workers can be quads.
    assert summary.total_max_gpus == 12


def _gcp(node_config: dict[str, Any], resources: dict[str, int]) -> dict[str, Any]:
    return {
        "cluster_name": "g",
        "max_workers": 2,
        "provider": {"type": "gcp", "region": "us-central1", "project_id": "p"},
        "available_node_types": {
            "head": {"resources": {"CPU": 4}, "node_config": {"machineType": "n2-standard-4"}},
            "gpu": {"resources": resources, "node_config": node_config, "max_workers": 2},
        },
        "head_node_type": "head",
    }


T4 = {"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 2}


@pytest.mark.parametrize(
    ("node_config", "resources", "expected"),
    [
        ({"machineType": "n1-standard-8", "guestAccelerators": [T4]}, {"CPU": 8},
         "is a GPU instance but resources declares no GPU"),
        ({"machineType": "n1-standard-8", "guestAccelerators": [T4]}, {"GPU": 4},
         "declares 4 GPUs but n1-standard-8 has 2"),
        ({"machineType": "n2-standard-8"}, {"GPU": 1}, "n2-standard-8 has no GPU"),
        ({"machineType": "a2-highgpu-1g"}, {"GPU": 2}, "a2-highgpu-1g has 1"),
    ],
    ids=["attached-undeclared", "attached-overdeclared", "cpu-machine", "a2-count"],
)  # fmt: skip
def test_gcp_gpu_rules(
    node_config: dict[str, Any], resources: dict[str, int], expected: str, tmp_path: Path
) -> None:
    message = _refusal(_write(tmp_path, _gcp(node_config, resources)))
    assert "available_node_types.gpu.resources" in message and expected in message


def test_gcp_gpu_cluster_is_valid(tmp_path: Path) -> None:
    config = _gcp({"machineType": "g2-standard-24"}, {"CPU": 24, "GPU": 2})
    summary = check_cluster_file(_write(tmp_path, config))
    assert summary.total_max_gpus == 4 and summary.warnings == ()


def test_azure_gpu_size_needs_gpu_resource(tmp_path: Path) -> None:
    config = {
        "cluster_name": "az",
        "max_workers": 1,
        "provider": {"type": "azure", "location": "westus2", "resource_group": "rg"},
        "available_node_types": {
            "head": {
                "resources": {"CPU": 4},
                "node_config": {"azure_arm_parameters": {"vmSize": "Standard_NC6s_v3"}},
            }
        },
        "head_node_type": "head",
    }
    assert "Standard_NC6s_v3 is a GPU instance" in _refusal(_write(tmp_path, config))
