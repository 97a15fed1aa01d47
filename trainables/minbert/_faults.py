"""Fault injection for the reliability tests: inert unless `HPSEARCH_FAULT` is set.

A TEST HOOK, not a feature. The reliability tests (tests/hpsearch/test_reliability.py) use it to
make chosen trials fail in chosen ways at chosen moments, deterministically, through the real
code paths: a real exception, a real NaN loss, a real SIGKILL of the training process, a real
sleep while a checkpoint is half written. Nothing here runs unless the variable is set; a
malformed value is refused before a sweep or a run starts (`check_env`).

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
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from trainables.errors import ConfigError

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


def check_env() -> list[Fault]:
    """The faults the environment asks for ([] when unset); refuses a malformed value."""
    return parse(os.environ.get(ENV, ""))


def _active(kind: str, seed: int | None, step: int | None = None) -> list[Fault]:
    text = os.environ.get(ENV)
    if not text:
        return []
    return [
        f
        for f in parse(text)
        if f.kind == kind and f.seed in (None, seed) and f.step in (None, step)
    ]


def _mark(folder: Path | None, kind: str) -> None:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f".fault-{kind}").write_text(f"{time.time()}\n")


def _sleep(kind: str, seed: int | None, folder: Path | None, step: int | None = None) -> None:
    for fault in _active(kind, seed, step):
        _mark(folder, kind)
        time.sleep(fault.arg)


def in_setup(seed: int, run_dir: Path) -> None:
    _sleep("sleep_in_setup", seed, run_dir)


def in_checkpoint(seed: int, run_dir: Path, step: int) -> None:
    _sleep("sleep_in_checkpoint", seed, run_dir, step)


def in_report(exp_dir: Path) -> None:
    _sleep("sleep_in_report", None, exp_dir)


def before_step(step: int, seed: int, run_dir: Path) -> None:
    """Called before optimizer step `step` (1-based) is taken."""
    if not os.environ.get(ENV):
        return
    _sleep("sleep_per_step", seed, None)
    for fault in _active("raise_at_step", seed):
        if step == fault.arg:
            _mark(run_dir, "raise_at_step")
            raise InjectedFault(f"injected fault: raise_at_step {step} ({ENV} test hook)")
    for kind in ("kill_at_step", "kill_once_at_step"):
        for fault in _active(kind, seed):
            if step != fault.arg:
                continue
            if kind == "kill_once_at_step" and (run_dir / f".fault-{kind}").exists():
                continue
            _mark(run_dir, kind)
            os.kill(os.getpid(), signal.SIGKILL)


def poison_loss(step: int, seed: int) -> bool:
    """True when the losses of step `step` are to be made NaN."""
    return any(step == f.arg for f in _active("nan_at_step", seed))
