"""ASHA's clock: its rungs count the multitask loop's evaluations, never a pre-training one.

With sequential STS pre-training a trial evaluates once after each STS-only epoch, where SST
and Quora are untrained and dev_overall measures STS alone. ASHA deciding there stopped 4 of
best_minilm.yaml v2's 10 tuning trials by their STS score. The reporter (hpsearch.worker)
marks each multitask evaluation with its index (MAIN_EVAL) and ASHA counts that key alone.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpsearch.searcher import asha_scheduler
from hpsearch.space_parser import load_search_space
from hpsearch.worker import MAIN_EVAL, TuneReporter
from trainables.minbert.callbacks import TrainerCallback
from trainables.minbert.config import load_trial_config
from trainables.minbert.trainer import train_trial

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[2]
# the tiny trial, one STS-only epoch first, then 2 multitask epochs of 2 evaluations each
SEQUENTIAL = (
    "extensions.sequential_sts=true",
    "extensions.sequential_sts_epochs=1",
    "train.epochs=2",
    "train.evals_per_epoch=2",
)


class Results:
    """What the reporter hands Ray: one result per call, as `ray.tune.report` takes them."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def __call__(self, result: dict[str, Any], checkpoint: Any = None) -> None:
        self.results.append(result)


class CrashAfterEval(TrainerCallback):
    """Interrupts the run after its n-th evaluation (its checkpoint is sealed by then)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def on_evaluate(self, trainer: Any, metrics: dict[str, Any], checkpoint: Any) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


def _config(tmp_path: Path, *extra: str):
    return load_trial_config(
        REPO / "trainables/configs/tiny.yaml",
        [*SEQUENTIAL, f"data.cache_dir={tmp_path / 'tokens'}", *extra],
    )


def _clock(results: list[dict[str, Any]]) -> list[tuple[str, int | None]]:
    return [(r["phase"], r.get(MAIN_EVAL)) for r in results]


def test_pre_training_evaluations_carry_no_asha_clock(tmp_path):
    sent = Results()
    summary = train_trial(_config(tmp_path), tmp_path / "run", callbacks=[TuneReporter(sent)])
    assert _clock(sent.results) == [
        ("sequential", None),
        ("multitask", 1),
        ("multitask", 2),
        ("multitask", 3),
        ("multitask", 4),  # the final result, reported from on_train_end
    ]
    assert sent.results[-1]["final"] is True
    assert sent.results[-1]["dev_overall"] == summary["dev_overall"]
    assert MAIN_EVAL not in summary  # Ray's key, not the trainer's: summary.json is unchanged


def test_without_pre_training_the_clock_is_every_evaluation(tmp_path):
    sent = Results()
    cfg = _config(tmp_path, "extensions.sequential_sts=false")
    train_trial(cfg, tmp_path / "run", callbacks=[TuneReporter(sent)])
    assert _clock(sent.results) == [("multitask", k) for k in (1, 2, 3, 4)]


@pytest.mark.parametrize("crash_after", [1, 3])  # in pre-training; in the multitask loop
def test_a_resumed_trial_continues_the_clock(tmp_path, crash_after):
    cfg = _config(tmp_path)
    first = Results()
    with pytest.raises(KeyboardInterrupt):
        train_trial(
            cfg,
            tmp_path / "run",
            callbacks=[TuneReporter(first), CrashAfterEval(crash_after)],
        )
    again = Results()
    train_trial(
        cfg, tmp_path / "run", callbacks=[TuneReporter(again)], resume_from=tmp_path / "run"
    )
    clock = _clock(first.results) + _clock(again.results)
    assert clock == [
        ("sequential", None),
        ("multitask", 1),
        ("multitask", 2),
        ("multitask", 3),
        ("multitask", 4),
    ]


def test_asha_never_stops_a_trial_on_a_pre_training_evaluation():
    """The sweep's real ASHA (grace period 1, reduction factor 2) on two trials: A's first
    multitask evaluation sets the rung's bar; B's STS-only evaluation, far below it, is no
    rung result (Ray's training_iteration would have made it one and stopped B there); B's
    first multitask evaluation is, and is judged."""
    from ray.tune.schedulers import TrialScheduler

    space = load_search_space(REPO / "search_spaces/smoke.yaml")
    assert (space.asha_grace_period, space.asha_reduction_factor) == (1, 2)
    asha = asha_scheduler(space)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for trial in (a, b):
        asha.on_trial_add(None, trial)

    def result(iteration: int, score: float, main_eval: int | None) -> dict[str, Any]:
        out = {"training_iteration": iteration, "dev_overall": score}
        return out if main_eval is None else {**out, MAIN_EVAL: main_eval}

    assert asha.on_trial_result(None, a, result(1, 0.9, 1)) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, b, result(1, 0.2, None)) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, b, result(2, 0.95, 1)) == TrialScheduler.CONTINUE
    c = SimpleNamespace(trial_id="c")
    asha.on_trial_add(None, c)
    assert asha.on_trial_result(None, c, result(1, 0.99, None)) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, c, result(2, 0.5, 1)) == TrialScheduler.STOP
