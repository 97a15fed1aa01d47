"""The error types every layer shares: bad input, and trials that cannot go on.

This module imports nothing of the project, so that any module (the trainer, its callbacks,
the sweep driver, the cluster checker, the reports) can raise or catch these without an
import cycle.

`ConfigError` is bad user input: every check on config files, overrides, data folders,
checkpoints and command-line options raises it with a single line that names the file or
field and says how to fix it. The CLI prints `error: <message>` and exits with status 2;
no traceback.

`TrialFailure` and its subclasses end one trial for good: a sweep reports it as the trial's
final, failed result instead of letting Ray retry it (other exceptions are retried from the
trial's last checkpoint).
"""

from __future__ import annotations

__all__ = ["ConfigError", "NonFiniteLossError", "TimeLimitExceeded", "TrialFailure"]


class ConfigError(ValueError):
    """Bad user input, described in one line that names the culprit and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class TrialFailure(RuntimeError):
    """The trial cannot go on and retrying it would fail the same way: it is marked failed.

    A sweep reports it as the trial's final, failed result (with this message as the reason)
    instead of letting Ray retry it; other exceptions are retried from the last checkpoint.
    """


class NonFiniteLossError(TrialFailure):
    """A task loss became NaN or infinite: the trial is stopped and marked failed."""


class TimeLimitExceeded(TrialFailure):
    """The trial ran past its time limit (see `trainables.minbert.callbacks.TimeLimit`)."""
