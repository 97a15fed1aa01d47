"""Trials sharing one GPU: a real sweep (Ray Tune, Optuna's grid, DeepSpeed) of six tiny
trials with `--gpus-per-trial 0.25`, so that four run at the same time on GPU 0.

What it checks:
- every trial finished, on CUDA (its summary says which device) in bf16;
- four trials ran at once: their start-to-end intervals (the driver's trial records)
  overlap four deep, and, where nvidia-smi lists processes, four processes held GPU memory in
  one sample;
- GPU memory comes back after each trial: every trial process nvidia-smi saw is gone from its
  compute apps once the sweep ends, and the GPU's memory in use is back to its level before
  the sweep (within 256 MiB).
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
import yaml

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False"
    ),
]

TRIALS = 6
AT_ONCE = 4
USED_SLACK_MIB = 256
SPACE = {
    "name": "gpu_share",
    "description": "Tiny random-init trials, four at a time on one GPU.",
    "base": {
        "model.checkpoint": "random",
        "model.hidden_size": 64,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.intermediate_size": 128,
        "data.max_length": 32,
        "data.max_eval_examples": 64,
        "data.train_eval_examples": 32,
        "train.batch_size": 8,
        "train.epochs": 2,
        "train.evals_per_epoch": 2,
        "train.lr": 1.0e-3,
        "extensions.pcgrad": True,
    },
    "search": {
        "sampler": "grid",
        "seed": 0,
        "metric": "dev_overall",
        "mode": "max",
        "scheduler": "none",
    },
    "seeds": list(range(TRIALS)),
}


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals (start, end) that hold one moment in common."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    depth = best = 0
    for _, change in events:  # at a tie an end sorts first: touching is not overlapping
        depth += change
        best = max(best, depth)
    return best


def test_most_at_once() -> None:
    assert most_at_once([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert most_at_once([(0, 1), (1, 2)]) == 1
    assert most_at_once([(0, 10), (1, 9), (2, 8), (3, 7)]) == 4


@pytest.fixture(scope="module")
def gpu_sweep(tmp_path_factory, hpsearch_tools, gpu_apps, gpu_used, app_sampler_class):
    """The sweep, run once: its experiment folder, trial records and nvidia-smi readings."""
    root = tmp_path_factory.mktemp("gpu_sweep")
    space = root / "gpu_share.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    before_apps = gpu_apps() or {}
    before_used = gpu_used()
    with app_sampler_class() as sampler:
        hpsearch_tools.run(
            [
                "sweep",
                str(space),
                "--storage-path",
                str(root),
                "--num-cpus",
                str(min(os.cpu_count() or AT_ONCE, 8)),
                "--cpus-per-trial",
                "1",
                "--gpus-per-trial",
                str(1 / AT_ONCE),
                "--max-concurrent",
                str(AT_ONCE),
                "--no-report",
            ],
            hpsearch_tools.env(root),
            timeout=900,
        )
    exp = root / "gpu_share"
    return SimpleNamespace(
        exp=exp,
        records=hpsearch_tools.records(exp),
        sampler=sampler,
        before_apps=before_apps,
        after_apps=gpu_apps() or {},
        before_used=before_used,
        after_used=gpu_used(),
    )


def test_four_trials_run_at_once_on_the_gpu(gpu_sweep) -> None:
    recs = gpu_sweep.records
    assert len(recs) == TRIALS and all(r["status"] == "finished" for r in recs.values()), recs
    for rec in recs.values():
        summary = json.loads((gpu_sweep.exp / rec["trial_dir"] / "summary.json").read_text())
        assert summary["device"].startswith("cuda"), summary["device"]
        assert summary["dist_backend"] == "nccl"
        assert summary["final"] is True and summary["peak_mem_mb"] > 0
    intervals = [(r["started_at"], r["ended_at"]) for r in recs.values()]
    assert most_at_once(intervals) == AT_ONCE, intervals  # never more: 4 x 0.25 GPU


def test_trial_processes_share_the_gpu_and_release_it(gpu_sweep) -> None:
    sampler, before = gpu_sweep.sampler, set(gpu_sweep.before_apps)
    trial_pids = sampler.pids(exclude=before)
    if not sampler.samples or not trial_pids:
        pytest.skip(
            "nvidia-smi is missing, did not answer or lists no process ids here: the trials' "
            "overlap is shown by their records only"
        )
    assert sampler.most_at_once(exclude=before) == AT_ONCE
    assert len(trial_pids) >= AT_ONCE
    still = trial_pids & set(gpu_sweep.after_apps)
    assert not still, f"trial processes still hold GPU memory: {gpu_sweep.after_apps}"
    if gpu_sweep.before_used is not None and gpu_sweep.after_used is not None:
        assert gpu_sweep.after_used <= gpu_sweep.before_used + USED_SLACK_MIB, (
            gpu_sweep.before_used,
            gpu_sweep.after_used,
        )
