"""Fault injection for the reliability tests: nothing happens unless `HPSEARCH_FAULT` is set.

A TEST HOOK, not a feature. The reliability tests (tests/hpsearch/test_reliability.py) use it to
make chosen trials fail in chosen ways at chosen moments, deterministically, through the real
code paths: a real exception, a real NaN loss, a real SIGKILL of the training process, a real
sleep while a checkpoint is half written. The trainer adds a `FaultInjector` callback only when
`armed()` finds faults, and the sweep driver calls `before_report` only then; a malformed value
is refused (ConfigError) before a sweep or a run starts.

    HPSEARCH_FAULT="kind:arg[@seed=S][,step=N][;kind:arg...]"

    raise_at_step:N          raise RuntimeError before optimizer step N
    nan_at_step:N            make the task losses of step N NaN (-> NonFiniteLossError)
    kill_at_step:N           SIGKILL the training process before step N, on every attempt
    kill_once_at_step:N      the same, on the first attempt only (a marker file remembers)
    sleep_per_step:SECONDS   sleep before every step (a slow trial, for time limits)
    sleep_in_setup:SECONDS   sleep at trial start, right after config.json is written
    sleep_in_checkpoint:SEC  sleep while a checkpoint is half written (staged, not sealed)
    sleep_in_report:SECONDS  sleep in the sweep driver just before it writes the report

`@seed=S` limits a fault to trials whose `train.seed` is S (the report fault has no seed);
`step=N` limits `sleep_in_checkpoint` to the checkpoint of step N.
Each fault that fires first leaves a marker file `.fault-<kind>` in the run folder (the
experiment folder for the report fault), so that a test can wait for the moment it wants.
Ray starts its workers with the driver's environment, so setting the variable for the
`hpsearch sweep` process reaches every trial.

This module imports no torch: the sweep driver imports it too.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainables.errors import ConfigError
from trainables.minbert.callbacks import TrainerCallback

if TYPE_CHECKING:
    from torch import Tensor

    from trainables.minbert.trainer import MultitaskTrainer

__all__ = [
    "ENV",
    "KINDS",
    "Fault",
    "FaultInjector",
    "InjectedFault",
    "armed",
    "before_report",
    "describe",
    "parse",
]

ENV = "HPSEARCH_FAULT"
_STEP_KINDS = ("raise_at_step", "nan_at_step", "kill_at_step", "kill_once_at_step")
_SLEEP_KINDS = ("sleep_per_step", "sleep_in_setup", "sleep_in_checkpoint", "sleep_in_report")
KINDS = _STEP_KINDS + _SLEEP_KINDS


class InjectedFault(RuntimeError):
    """The exception `raise_at_step` raises."""


@dataclass(frozen=True)
class Fault:
    kind: str
    arg: float  # the step, or seconds
    seed: int | None = None  # only trials with this train.seed
    step: int | None = None  # only the checkpoint of this step (sleep_in_checkpoint)


def parse(text: str) -> list[Fault]:
    """Parse an `HPSEARCH_FAULT` value; ConfigError on anything malformed."""
    faults = []
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        spec, _, cond = item.partition("@")
        kind, _, arg = spec.partition(":")
        if kind not in KINDS:
            raise ConfigError(
                f"{ENV}: unknown fault {kind!r} in {item!r}; use one of "
                f"{', '.join(KINDS)} (a test hook: unset {ENV} for real runs)"
            )
        try:
            value = float(arg)
        except ValueError:
            raise ConfigError(f"{ENV}: {item!r} needs a number after '{kind}:'") from None
        if value < 0 or (kind in _STEP_KINDS and (value < 1 or value != int(value))):
            raise ConfigError(f"{ENV}: {item!r}: give a step >= 1 or a number of seconds >= 0")
        where: dict[str, int] = {}
        for condition in filter(None, cond.split(",")):
            key, _, raw = condition.partition("=")
            try:
                if key.strip() not in ("seed", "step"):
                    raise ValueError
                where[key.strip()] = int(raw)
            except ValueError:
                raise ConfigError(
                    f"{ENV}: {item!r}: conditions are @seed=<integer> and "
                    "step=<integer>, separated by a comma"
                ) from None
        if "step" in where and kind != "sleep_in_checkpoint":
            raise ConfigError(f"{ENV}: {item!r}: step= applies to sleep_in_checkpoint only")
        faults.append(Fault(kind, value, where.get("seed"), where.get("step")))
    return faults


def armed() -> list[Fault]:
    """The faults the environment asks for ([] when unset); ConfigError on a malformed value."""
    return parse(os.environ.get(ENV, ""))


def describe(faults: list[Fault]) -> str:
    """One line naming `faults`, in the variable's own syntax: "nan_at_step:3@seed=1; ..."."""
    items = []
    for fault in faults:
        conditions = [
            f"{key}={value}"
            for key, value in (("seed", fault.seed), ("step", fault.step))
            if value is not None
        ]
        where = "@" + ",".join(conditions) if conditions else ""
        items.append(f"{fault.kind}:{fault.arg:g}{where}")
    return "; ".join(items)


def before_report(faults: list[Fault], exp_dir: Path) -> None:
    """The driver-side fault: `sleep_in_report`, just before the sweep writes its report."""
    for fault in faults:
        if fault.kind == "sleep_in_report" and fault.seed is None:
            _mark(exp_dir, fault.kind)
            time.sleep(fault.arg)


class FaultInjector(TrainerCallback):
    """The trainer-side faults, each fired from the callback hook of its moment.

    A fault applies to a trial when it names no seed or the trial's `train.seed`; marker files
    go to the trial's run folder.
    """

    def __init__(self, faults: list[Fault]) -> None:
        self.faults = list(faults)

    def _matching(
        self, trainer: MultitaskTrainer, kind: str, step: int | None = None
    ) -> list[Fault]:
        seed = trainer.cfg.train.seed
        return [
            f
            for f in self.faults
            if f.kind == kind and f.seed in (None, seed) and f.step in (None, step)
        ]

    def _sleep(self, trainer: MultitaskTrainer, kind: str, step: int | None = None) -> None:
        for fault in self._matching(trainer, kind, step):
            _mark(trainer.out_dir, kind)
            time.sleep(fault.arg)

    def on_setup(self, trainer: MultitaskTrainer) -> None:
        self._sleep(trainer, "sleep_in_setup")

    def on_step_begin(self, trainer: MultitaskTrainer, step: int) -> None:
        for fault in self._matching(trainer, "sleep_per_step"):
            time.sleep(fault.arg)  # every step: no marker
        for fault in self._matching(trainer, "raise_at_step"):
            if step == fault.arg:
                _mark(trainer.out_dir, "raise_at_step")
                raise InjectedFault(f"injected fault: raise_at_step {step} ({ENV} test hook)")
        for kind in ("kill_at_step", "kill_once_at_step"):
            for fault in self._matching(trainer, kind):
                if step != fault.arg:
                    continue
                if kind == "kill_once_at_step" and (trainer.out_dir / f".fault-{kind}").exists():
                    continue
                _mark(trainer.out_dir, kind)
                os.kill(os.getpid(), signal.SIGKILL)

    def on_losses(
        self, trainer: MultitaskTrainer, step: int, losses: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        if any(step == f.arg for f in self._matching(trainer, "nan_at_step")):
            return {task: loss * float("nan") for task, loss in losses.items()}
        return losses

    def on_checkpoint_staged(self, trainer: MultitaskTrainer, step: int, staging: Path) -> None:
        self._sleep(trainer, "sleep_in_checkpoint", step)


def _mark(folder: Path, kind: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".fault-{kind}").write_text(f"{time.time()}\n")
