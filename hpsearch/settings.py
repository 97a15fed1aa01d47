"""How a sweep runs, with every default in one place (the CLI reads its defaults from here).

`SweepSettings` is what `hpsearch sweep` is asked beyond the space file: where the experiment
lives, the trial budget and resources, the Ray cluster, retries and time limits. It crosses the
Ray boundary as it is (inside `hpsearch.experiment.Experiment`), and experiment.json records it
field by field. `SMOKE_OVERRIDES` is the one definition of `--smoke-test` for both `hpsearch
train` and `hpsearch sweep`.

This module imports nothing heavy: `hpsearch --help` builds its parser from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["SMOKE_OVERRIDES", "SweepSettings"]

# What --smoke-test changes in every trial (`hpsearch train` and each trial of a sweep): a few
# steps on a little data, through the same code path.
SMOKE_OVERRIDES: dict[str, Any] = {
    "data.max_train_examples": 48,
    "data.max_eval_examples": 32,
    "data.train_eval_examples": 16,
    "data.max_length": 32,
    "train.max_steps": 4,
    "train.evals_per_epoch": 2,
    "train.batch_size": 8,
}

# The Tune trial that drives data-parallel Ray Train workers holds this much CPU itself.
DRIVER_TRIAL_CPUS = 0.1


@dataclass
class SweepSettings:
    """How a sweep runs (as opposed to what it searches, which the space file says)."""

    name: str | None = None  # experiment folder name; default: the space's name
    storage_path: str = "results"  # experiments live in STORAGE/NAME
    num_samples: int | None = None  # default: the space's
    max_concurrent: int | None = None  # default: the space's, else as many as resources allow
    cpus_per_trial: float | None = None  # per worker; default 1 (see cpus_per_worker)
    gpus_per_trial: float = 0.0  # per worker
    workers_per_trial: int = 1  # >1: data-parallel DeepSpeed through Ray Train
    data_dir: str | None = None  # CS224N files; None: the built-in synthetic data
    address: str | None = None  # Ray cluster address; None: start a local Ray
    num_cpus: int | None = None  # CPUs of the local Ray
    max_failures: int = 2  # retries of a failed trial from its last checkpoint
    time_limit_per_trial: float | None = None  # seconds
    exist_ok_suffix: bool = False  # NAME exists: use NAME-2, ... instead of refusing
    warm_start: str | None = None  # an earlier experiment whose finished trials seed the sampler
    smoke_test: bool = False
    report: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted, applied to every trial

    @property
    def cpus_per_worker(self) -> float:
        """CPUs each trial worker asks Ray for: --cpus-per-trial, or 1 when not given."""
        return 1.0 if self.cpus_per_trial is None else self.cpus_per_trial

    @property
    def data_parallel(self) -> bool:
        """Whether each trial fans out to several Ray Train workers."""
        return self.workers_per_trial > 1

    def trial_resources(self) -> dict[str, float]:
        """What the Tune trial itself holds: one worker's share, or a sliver when Ray Train
        workers hold the resources."""
        if self.data_parallel:
            return {"cpu": DRIVER_TRIAL_CPUS}
        return {"cpu": self.cpus_per_worker, "gpu": self.gpus_per_trial}

    def cpus_needed(self) -> float:
        """CPUs one trial occupies on the cluster, workers and driving trial together."""
        need = self.cpus_per_worker * self.workers_per_trial
        return need + DRIVER_TRIAL_CPUS if self.data_parallel else need

    def to_dict(self) -> dict[str, Any]:
        """Field by field, as experiment.json records it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any]) -> SweepSettings:
        """The settings experiment.json recorded (fields it lacks take their defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in recorded.items() if k in names})

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field `name` (the CLI's argparse defaults come from here)."""
        for f in fields(cls):
            if f.name == name:
                return f.default
        raise KeyError(name)
