"""How long a SLURM job of a sweep needs at least: the estimate behind `hpsearch slurm`'s
time-limit check.

Search spaces state their budget in words only (the "Budget:" comment of each file), so the
estimate is computed from what a trial will do, optimistically, to refuse only a time limit
that is clearly too short (an estimate that errs long would refuse jobs that fit):

  trial  = TRIAL_START_S
           + steps x (6 x encoder weights x tokens per step / speed
                      + OPTIMIZER_S_PER_WEIGHT x all weights + STEP_FLOOR_S)
           + evaluations x 2 x encoder weights x tokens per evaluation / speed
  sweep  = JOB_START_S + ceil(trials / trials at once) x trial + STOP_MARGIN_S

- The steps and evaluations are the trial's own schedule (`trainables.minbert.schedule`, as the
  trainer builds it) over the data's row counts (the synthetic set's sizes, or the lines of
  the --data-dir files), capped by data.max_train_examples and train.max_steps; an evaluation
  scores dev and the train subset, and the last one the held-out test split too. The trial
  is the space's first (seeded) sample, standing for every trial.
- Tokens per sequence: data.max_length, at most TOKENS_PER_SEQUENCE (the trainer batches
  sentences of similar length, so a step computes about the real lengths; CS224N's average
  ~19 including padding, docs/BENCHMARKS.md). A pair is two sequences (siamese).
- Speed: CPU_FLOPS_PER_CORE per CPU of a trial's workers, or GPU_FLOPS per GPU: about the best
  this code reached on one CPU core (112 GFLOP/s, docs/BENCHMARKS.md) and a fair share of a
  modern GPU; the optimizer's update as fused AdamW's here (28 ms for MiniLM's 22.7M weights).
  Real runs are slower: on this project's 2-core machine paper_ablation_cpu.yaml takes 30-45
  min where the estimate says 11.
- --time-limit-per-trial caps a trial's share. ASHA's early stops are not counted.

`hpsearch slurm --resume` uses what the experiment measured instead: the mean wall time of its
ended trials, for the trials not yet ended.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainables.errors import ConfigError

if TYPE_CHECKING:
    from hpsearch.settings import SweepSettings
    from trainables.minbert.config import TrialConfig

__all__ = ["JOB_START_S", "STOP_MARGIN_S", "Estimate", "estimate_trial_seconds", "sweep_estimate"]

# Seconds SLURM's warning signal comes before the time limit (#SBATCH --signal=B:USR1@...): the
# job stops the sweep and Ray in that time, so that `hpsearch slurm --resume` continues it.
STOP_MARGIN_S = 120
JOB_START_S = 30  # Ray's nodes up and joined, the driver's pre-flight, Tune's first trial
TRIAL_START_S = 10  # a trial's Ray worker, data from the token cache, its DeepSpeed engine
STEP_FLOOR_S = 0.01  # a step of a tiny model: Python, the batches
OPTIMIZER_S_PER_WEIGHT = 1.2e-9  # fused AdamW, embeddings included
TOKENS_PER_SEQUENCE = 20
CPU_FLOPS_PER_CORE = 1.0e11
GPU_FLOPS = 2.5e13
_VOCAB = 30522  # MiniLM's WordPiece vocabulary, a random-init model's default
_PAIR_TASKS = ("para", "sts")


@dataclass(frozen=True)
class Estimate:
    """The least wall time a job of the sweep needs, and how it was reckoned (one phrase)."""

    seconds: float
    how: str


def sweep_estimate(
    trials: int, trial_seconds: float, at_once: int, per_trial_how: str
) -> Estimate:
    """The job's estimate: its start, `trials` in waves of `at_once`, the stop margin."""
    waves = math.ceil(trials / max(1, at_once)) if trials else 0
    seconds = JOB_START_S + waves * trial_seconds + STOP_MARGIN_S
    how = (
        f"{trials} trial(s), {at_once} at once, {waves} wave(s) of ~{trial_seconds:.0f} s "
        f"({per_trial_how}), plus {JOB_START_S} s to start and {STOP_MARGIN_S} s to stop"
    )
    return Estimate(seconds, how)


def estimate_trial_seconds(cfg: TrialConfig, settings: SweepSettings) -> tuple[float, str]:
    """An optimistic wall time of one trial of `cfg` run as `settings` say; and how."""
    from trainables.minbert.data import TASKS, held_out_count
    from trainables.minbert.extensions.phases import make_phases
    from trainables.minbert.schedule import build_schedule

    rows = _train_dev_rows(cfg)
    train, test, dev = {}, {}, {}
    cap = cfg.data.max_eval_examples
    for task in TASKS:
        held_out = held_out_count(rows[task][0], cfg.data.test_fraction)
        train[task] = min(rows[task][0] - held_out, cfg.data.max_train_examples or rows[task][0])
        test[task] = min(held_out, cap or held_out)
        dev[task] = min(rows[task][1], cap or rows[task][1])
    workers, batch = settings.workers_per_trial, cfg.train.batch_size
    schedule = build_schedule(
        make_phases(cfg, TASKS),
        lambda task: max(1, math.ceil(train[task] / batch) // workers),
        cfg.train.max_steps,
    )
    tokens = min(cfg.data.max_length, TOKENS_PER_SEQUENCE)
    sequences = {t: 2 if t in _PAIR_TASKS else 1 for t in TASKS}
    step_tokens = [
        sum(sequences[t] for t in step) * batch * tokens * workers
        for epoch in schedule
        for step in epoch.steps
    ]
    evaluations = sum(len(epoch.eval_points()) for epoch in schedule)
    scored = sum(
        (evaluations * (dev[t] + min(train[t], cfg.data.train_eval_examples)) + test[t])
        * sequences[t]
        for t in TASKS
    )
    encoder, weights = _weights(cfg)
    if settings.gpus_per_trial > 0:
        speed, on = GPU_FLOPS * settings.gpus_per_trial * workers, "GPU"
    else:
        speed, on = CPU_FLOPS_PER_CORE * settings.cpus_per_worker * workers, "CPU"
    step_s = OPTIMIZER_S_PER_WEIGHT * weights + STEP_FLOOR_S
    train_s = sum(6 * encoder * n / speed + step_s for n in step_tokens)
    eval_s = 2 * encoder * scored * tokens / speed
    seconds = TRIAL_START_S + train_s + eval_s
    how = (
        f"{len(step_tokens)} steps and {evaluations} evaluations of a "
        f"{encoder / 1e6:.2g}M-weight encoder at {speed / 1e9:.0f} GFLOP/s ({on})"
    )
    limit = settings.time_limit_per_trial
    if limit is not None and limit < seconds:
        return limit, f"--time-limit-per-trial {limit:g}"
    return seconds, how


def _train_dev_rows(cfg: TrialConfig) -> dict[str, tuple[int, int]]:
    """(train rows, dev rows) of each task's files: the synthetic set's, or --data-dir's."""
    from trainables.minbert.data import TASKS

    if cfg.data.data_dir is None:
        from trainables.minbert.synthetic import SIZES

        return {task: SIZES[task] for task in TASKS}
    from trainables.minbert.task_files import task_files

    rows = {}
    for task in TASKS:
        train, dev, _ = task_files(Path(cfg.data.data_dir).expanduser(), task)
        rows[task] = (_data_lines(train), _data_lines(dev) if dev.is_file() else 0)
    return rows


def _data_lines(path: Path) -> int:
    """Rows of a CS224N file: its lines but the header."""
    with open(path, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def _weights(cfg: TrialConfig) -> tuple[float, float]:
    """(the encoder's weights that every token passes through, all weights the optimizer
    updates): the layers, then the layers and the embeddings."""
    model = cfg.model
    vocab = _VOCAB
    if model.checkpoint == "random":
        hidden, layers, inner = model.hidden_size, model.num_layers, model.intermediate_size
    else:
        from trainables.minbert.hf_folder import resolve_checkpoint_dir

        config = resolve_checkpoint_dir(model.checkpoint) / "config.json"
        try:
            doc = json.loads(config.read_text())
            hidden, layers = int(doc["hidden_size"]), int(doc["num_hidden_layers"])
            inner = int(doc["intermediate_size"])
            vocab = int(doc.get("vocab_size", _VOCAB))
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{config} is unreadable or lacks hidden_size, num_hidden_layers or "
                "intermediate_size: pass a Hugging Face BERT folder"
            ) from None
    encoder = layers * (4 * hidden * hidden + 2 * hidden * inner)
    return encoder, encoder + vocab * hidden
