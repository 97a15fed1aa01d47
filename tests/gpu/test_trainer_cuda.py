"""The trainer on a GPU, in this process: a tiny trial trains on CUDA in bf16 (precision
"auto"), and the GPU memory it took is back to its starting level after each trial.

One fixture runs three tiny trials one after another in this process. The first brings up
what stays for the life of a process whatever the trial (the CUDA context, cuBLAS'
workspace, the one-rank NCCL group DeepSpeed creates once per process); the level after it
is the baseline, and trials 2 and 3 must each end there:

- `torch.cuda.memory_allocated()` within 1 MiB of the baseline (a leaked tiny model, its
  bf16 weights, fp32 masters and AdamW moments, is over 40 MiB);
- this process's memory in `nvidia-smi --query-compute-apps` within 64 MiB of the
  baseline (the caching allocator's free blocks are handed back by the trainer's cleanup;
  the allowance is for CUDA kernels loaded lazily on first use).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from trainables.minbert.callbacks import TrainerCallback
from trainables.minbert.config import load_trial_config
from trainables.minbert.trainer import train_trial

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False"
    ),
]

MiB = 2**20
ALLOCATED_SLACK_MIB = 1
NVIDIA_SMI_SLACK_MIB = 64
TINY = [
    "model.hidden_size=128",
    "model.num_heads=4",
    "model.intermediate_size=256",
    "train.max_steps=8",
]
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


class EngineProbe(TrainerCallback):
    """What the engine looked like once set up, and the GPU memory in use mid-trial."""

    def __init__(self) -> None:
        self.seen: dict = {}

    def on_train_start(self, trainer) -> None:
        engine = trainer.engine
        self.seen = {
            "bf16": engine.bfloat16_enabled(),
            "params": {(p.device.type, p.dtype) for p in engine.module.parameters()},
            "allocated_mib": torch.cuda.memory_allocated() / MiB,
        }


@pytest.fixture(scope="module")
def trials(tmp_path_factory, gpu_apps):
    cfg = load_trial_config("trainables/configs/tiny.yaml", TINY)
    pid = os.getpid()
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        for key in RENDEZVOUS:
            mp.delenv(key, raising=False)
        mp.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path_factory.mktemp("torch_extensions")))
        for k in range(3):
            probe = EngineProbe()
            summary = train_trial(cfg, tmp_path_factory.mktemp(f"trial{k}"), callbacks=[probe])
            torch.cuda.synchronize()
            apps = gpu_apps()
            runs.append(
                {
                    "summary": summary,
                    "probe": probe.seen,
                    "allocated_mib": torch.cuda.memory_allocated() / MiB,
                    "smi_mib": None if apps is None else apps.get(pid),
                }
            )
    return runs


def test_tiny_trial_trains_on_the_gpu_in_bf16(trials) -> None:
    for run in trials:
        summary, probe = run["summary"], run["probe"]
        assert summary["status"] == "finished" and summary["steps"] == 8
        assert summary["device"] == f"cuda:{torch.cuda.current_device()}"
        assert summary["dist_backend"] == "nccl"
        assert probe["bf16"] is True  # precision "auto" on a GPU with bf16
        assert probe["params"] == {("cuda", torch.bfloat16)}
        for key in ("dev_sst_acc", "dev_para_acc", "dev_sts_r", "dev_overall"):
            assert math.isfinite(summary[key]), key


def test_allocated_gpu_memory_returns_to_its_level_after_each_trial(trials) -> None:
    baseline = trials[0]["allocated_mib"]
    for k, run in enumerate(trials[1:], 2):
        during = run["probe"]["allocated_mib"]
        assert during > baseline + 40, f"trial {k} allocated only {during - baseline:.1f} MiB"
        assert abs(run["allocated_mib"] - baseline) <= ALLOCATED_SLACK_MIB, (
            f"after trial {k}: {run['allocated_mib']:.1f} MiB allocated, "
            f"{baseline:.1f} MiB after the first"
        )
        # each trial's peak is its own (reset at set-up), and the same trial peaks alike
        assert run["summary"]["peak_mem_mb"] >= during
    peaks = [run["summary"]["peak_mem_mb"] for run in trials[1:]]
    assert max(peaks) <= 1.1 * min(peaks), peaks


def test_process_share_in_nvidia_smi_returns_after_each_trial(trials) -> None:
    shares = [run["smi_mib"] for run in trials]
    if any(share is None for share in shares):
        pytest.skip(
            "nvidia-smi is missing or does not list this process "
            f"(pid {os.getpid()}) among its compute apps: {shares}"
        )
    baseline = shares[0]
    for k, share in enumerate(shares[1:], 2):
        assert share <= baseline + NVIDIA_SMI_SLACK_MIB, (
            f"after trial {k} this process holds {share} MiB in nvidia-smi, "
            f"{baseline} MiB after the first"
        )
