"""What a sweep shows on the terminal: one progress line, and only what the user must see.

    with quiet_console(experiment.path / DRIVER_LOG):   # Ray's output -> EXP_DIR/driver.log
        tuner = Tuner(..., run_config=RunConfig(callbacks=[..., SweepProgress(exp, space)]))
        tuner.fit()

During a fit, everything Ray and the libraries print (Tune's trial tables, the trials' own
output that Ray forwards to the driver, Ray's warnings, Python warnings, log records) goes to
the experiment's `driver.log` instead of the terminal. The terminal gets the `SweepProgress`
line: trials finished / running / stopped / failed out of the total, the best score so far and
an ETA. On a terminal (a TTY) that one line is rewritten in place ('\\r'); otherwise (CI logs,
a file) a line is printed whenever a count or the best score changes. A failed trial, and a
trial retried after a failure, each get one line of their own with the reason, as the trial
records (`trials/<id>.json`) say it.

This module imports no Ray at import time except `ray.tune.Callback` (the driver imports it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ray.tune import Callback

if TYPE_CHECKING:
    from hpsearch.experiment import Experiment
    from hpsearch.space import SearchSpace

__all__ = ["DRIVER_LOG", "SweepProgress", "console", "format_duration", "quiet_console"]

DRIVER_LOG = "driver.log"  # in the experiment folder: everything Ray printed during fits
_CLEAR_LINE = "\x1b[K"  # ANSI: erase to the end of the line

# The terminal while a quiet_console is active (sys.stdout then points at the log file).
_terminal: IO[str] | None = None
_terminal_lock = threading.Lock()


def console() -> IO[str]:
    """Where lines meant for the user go: the terminal, even inside `quiet_console`."""
    return _terminal if _terminal is not None else sys.stdout


def _handler_streams() -> Iterator[logging.StreamHandler[Any]]:
    """Every logging StreamHandler holding a stream object of its own (handlers such as
    Ray's, which write to whatever sys.stderr is when they emit, follow the redirect)."""
    loggers: list[Any] = [logging.getLogger()]
    loggers += [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                getattr(type(handler), "stream", None), property
            ):
                yield handler


class _PlainLog(io.TextIOBase):
    """The log file as a text stream, without the terminal colour codes Ray writes."""

    def __init__(self, file: io.TextIOWrapper) -> None:
        self.file = file

    def write(self, text: str) -> int:
        self.file.write(_ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.file.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only in TextIOBase too
        return str(self.file.encoding)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_active_log: _PlainLog | None = None  # the log of the quiet_console now active


def _route_worker_output(log_path: Path) -> None:
    """Write what Ray forwards from its workers' stdout and stderr to `log_path` from now on
    in this process, instead of to sys.stdout: lines that arrive after a fit (Ray delivers
    them late, and prints its "[repeated Nx]" summaries at exit) go there too.

    Ray's handler is replaced in Ray's dispatcher (a private API; if it moved, worker output
    follows sys.stdout, which quiet_console redirects during the fit). Without de-duplication:
    the log keeps every line of every trial.
    """
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        print_logs = ray_worker.print_worker_logs
        names = [name for name, _ in dispatcher.handlers]
    except (ImportError, AttributeError):
        return
    if _RAY_HANDLER not in names and _OUR_HANDLER not in names:
        return  # ray.init(log_to_driver=False): nothing is forwarded

    def write(data: dict[str, Any]) -> None:
        active = _active_log
        if active is not None:
            print_logs(data, active)
            return
        with open(log_path, "a", encoding="utf-8", errors="replace") as file:
            print_logs(data, _PlainLog(file))

    dispatcher.remove_handler(_RAY_HANDLER)
    dispatcher.remove_handler(_OUR_HANDLER)
    dispatcher.add_handler(_OUR_HANDLER, write)


_RAY_HANDLER = "ray_print_logs"  # the name ray.init gives its handler of worker output
_OUR_HANDLER = "hpsearch_driver_log"


@contextlib.contextmanager
def quiet_console(log_path: Path) -> Iterator[io.TextIOBase]:
    """Send what Ray and the libraries print to `log_path` (appended) for the length of the
    block, and what Ray's workers print from now on; `console()` is the terminal meanwhile.
    Yields the log stream."""
    global _terminal, _active_log
    terminal_out, terminal_err = sys.stdout, sys.stderr
    terminal_streams = {id(terminal_out), id(terminal_err), id(sys.__stdout__), id(sys.__stderr__)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    file = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    log = _PlainLog(file)
    log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
    swapped: list[tuple[logging.StreamHandler[Any], Any]] = []
    for handler in _handler_streams():
        if id(handler.stream) in terminal_streams:
            swapped.append((handler, handler.setStream(log)))
    _terminal, _active_log = terminal_out, log
    _route_worker_output(log_path)
    sys.stdout = sys.stderr = log
    try:
        yield log
    finally:
        sys.stdout, sys.stderr = terminal_out, terminal_err
        _terminal, _active_log = None, None
        for handler, stream in swapped:
            handler.setStream(stream)
        file.close()


def format_duration(seconds: float) -> str:
    """1:05:09, 4:07, 0:09."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SweepProgress(Callback):
    """The sweep's one progress line on the terminal, and a line per failed trial.

    It reads each ended trial's status from its record, which `StatusRecorder` (earlier in
    the callback list) has just written, so that the counts and the reasons shown are the
    records' own. It holds no stream (Tune pickles its callbacks with the tuner): it writes to
    `console()`.
    """

    STATUSES = ("finished", "running", "stopped", "failed")

    def __init__(self, experiment: Experiment, space: SearchSpace) -> None:
        self.trials_dir = experiment.trials_dir
        self.total = experiment.total_trials
        objective = space.objectives[0]
        self.metric, self.maximise = objective.metric, objective.mode == "max"
        self.status: dict[str, str] = {}  # trial id -> one of STATUSES
        self.scores: dict[str, float] = {}  # trial id -> its latest score (none if failed)
        self.ended_here = 0  # trials that ended during this fit (for the ETA)
        self.t0 = time.monotonic()
        self._shown = ""  # the last line shown (without its clock), for non-TTY output
        self._width = 0

    # ------------------------------------------------------------------ Tune's hooks
    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        """The fit begins: count what earlier fits of this experiment ended (a resume)."""
        self.t0 = time.monotonic()
        self.ended_here = 0
        for path in sorted(self.trials_dir.glob("*.json")):
            record = _read_json(path)
            if record and record.get("status") in ("finished", "stopped", "failed"):
                self.status[path.stem] = record["status"]
        self._render()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.status[trial.trial_id] = "running"
        self._render()

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        value = result.get(self.metric)
        if result.get("failed") or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        self.scores[trial.trial_id] = float(value)  # a trial's latest, as the sweep ranks it
        self._render()

    def on_trial_complete(
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        record = _read_json(self.trials_dir / f"{trial.trial_id}.json") or {}
        self._say(f"trial {trial.trial_id}: {record.get('reason') or 'retrying after a failure'}")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._render(final=True)

    # ------------------------------------------------------------------ what is shown
    def _ended(self, trial: Any) -> None:
        record = _read_json(self.trials_dir / f"{trial.trial_id}.json") or {}
        status = record.get("status")
        if status not in ("finished", "stopped", "failed"):
            status = "failed" if getattr(trial, "status", "") == "ERROR" else "finished"
        self.status[trial.trial_id] = status
        self.ended_here += 1
        if status == "failed":
            self.scores.pop(trial.trial_id, None)  # a failed trial is never ranked
            self._say(
                f"trial {trial.trial_id} failed: {record.get('reason') or 'no reason recorded'}"
            )
        self._render()

    def best(self) -> tuple[str, float] | None:
        """(trial id, score) of the best trial so far: each trial not failed counts with its
        latest evaluation (a finished trial with its final one), as Optuna and the report
        rank trials."""
        if not self.scores:
            return None
        pick = max if self.maximise else min
        trial_id = pick(self.scores, key=lambda t: self.scores[t])
        return trial_id, self.scores[trial_id]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.STATUSES, 0)
        for status in self.status.values():
            counts[status] += 1
        return counts

    def line(self, width: int | None = None) -> tuple[str, str]:
        """(what changed, the whole line). With `width` (a terminal's), the longest of three
        forms that fits: the full one, then one without the best trial's id and the elapsed
        time, then a terse one (cut to `width` as a last resort)."""
        c = self.counts()
        ended = c["finished"] + c["stopped"] + c["failed"]
        best = self.best()
        score = f"{best[1]:.4f}" if best else "-"
        elapsed = time.monotonic() - self.t0
        remaining = max(0, self.total - ended)
        if remaining == 0:
            eta = "done"
        elif self.ended_here:
            eta = f"ETA {format_duration(elapsed / self.ended_here * remaining)}"
        else:
            eta = "ETA -"
        state = (
            f"trials {ended}/{self.total} ended: {c['finished']} finished, {c['stopped']} "
            f"stopped, {c['failed']} failed; {c['running']} running | best {self.metric} {score}"
            + (f" (trial {best[0]})" if best else "")
        )
        forms = [
            f"{state} | {format_duration(elapsed)} elapsed, {eta}",
            f"trials {ended}/{self.total}: {c['finished']} done, {c['running']} running, "
            f"{c['stopped']} stopped, {c['failed']} failed | best {self.metric} {score} | {eta}",
            f"{ended}/{self.total}: {c['finished']} done {c['running']} run {c['stopped']} "
            f"stop {c['failed']} fail | best {score} | {eta}",
        ]
        if width is None:
            return state, forms[0]
        fitting = [form for form in forms if len(form) <= width]
        return state, fitting[0] if fitting else forms[-1][:width]

    def _render(self, final: bool = False) -> None:
        out = console()
        tty = _is_tty(out)
        width = max(20, shutil.get_terminal_size().columns - 1) if tty else None
        state, text = self.line(width)
        with _terminal_lock:
            if tty:
                out.write(f"\r{text}{_CLEAR_LINE}" + ("\n" if final else ""))
                self._width = 0 if final else len(text)
            elif state != self._shown:
                out.write(text + "\n")
            self._shown = state
            out.flush()

    def _say(self, message: str) -> None:
        """One line of its own for the user (a failure), above the progress line."""
        out = console()
        with _terminal_lock:
            if _is_tty(out) and self._width:
                out.write(f"\r{_CLEAR_LINE}")
            out.write(message + "\n")
            out.flush()
        if _is_tty(out):
            self._render()


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
