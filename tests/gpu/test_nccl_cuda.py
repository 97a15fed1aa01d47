"""A data-parallel trial on GPUs: two DeepSpeed workers (Ray Train), one GPU each, talking
over NCCL. It needs two GPUs: NCCL refuses two ranks on one device, and on a machine with one
GPU the test skips and says so.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False"
    ),
]

SPACE = {
    "name": "nccl",
    "description": "One tiny trial, two DeepSpeed workers on two GPUs.",
    "base": {
        "model.checkpoint": "random",
        "model.hidden_size": 64,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.intermediate_size": 128,
        "data.max_length": 32,
        "data.max_train_examples": 64,
        "data.max_eval_examples": 32,
        "data.train_eval_examples": 16,
        "train.batch_size": 8,
        "train.evals_per_epoch": 2,
        "train.lr": 1.0e-3,
        "extensions.pcgrad": True,
    },
    "search": {"sampler": "grid", "metric": "dev_overall", "mode": "max", "scheduler": "none"},
    "seeds": [0],
}


def test_two_deepspeed_workers_over_nccl(tmp_path, cli, records) -> None:
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip(f"two NCCL workers need two GPUs; this machine has {gpus}")
    space = tmp_path / "nccl.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    cli(
        "sweep",
        str(space),
        "--storage-path",
        str(tmp_path),
        "--num-cpus",
        "4",
        "--workers-per-trial",
        "2",
        "--gpus-per-trial",
        "1",
        "--no-report",
        timeout=900,
    )
    recs = records(tmp_path / "nccl")
    assert [r["status"] for r in recs.values()] == ["finished"], recs
    run = tmp_path / "nccl" / next(iter(recs.values()))["trial_dir"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["dist_backend"] == "nccl"
    assert summary["device"].startswith("cuda")
    # data parallel: each rank takes half of the batches, so an epoch is half as many steps
    single = json.loads((run / "data_report.json").read_text())["sizes"]["train"]
    assert summary["steps"] < max(single.values())
