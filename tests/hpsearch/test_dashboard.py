"""`hpsearch dashboard EXP_DIR`: a real optuna-dashboard over HTTP, on a real sweep's study.

The main test runs a real tiny sweep (Ray Tune, Optuna's grid sampler, ASHA, DeepSpeed; one
trial made to fail by a real NaN loss), starts `hpsearch dashboard` on it as a subprocess and
reads optuna-dashboard's JSON API (`/api/studies`, `/api/studies/<id>`): every trial, its
state, values, parameters and intermediate values are exactly what `optuna.load_study` reads
from the same journal. The other tests use a study written with plain Optuna (no Ray, a
second or two each): the bad inputs refused in one line with exit 2, the read-only guard, and
stopping on SIGINT, SIGTERM and a SIGKILL of the parent with no process left.

Every `hpsearch dashboard` a test starts leads its own process group, killed whole in a
teardown whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import optuna
import psutil
import pytest
import yaml

from hpsearch.experiment import JOURNAL, Experiment, journal_storage
from hpsearch.settings import SweepSettings

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 120.0  # the dashboard answers in ~2 s on a quiet machine; far longer on a loaded one
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# The trial of seed 3 fails for good: a real NaN loss before its first evaluation.
_FAULT = "nan_at_step:2@seed=3"


def _get_json(url: str) -> Any:
    with _OPENER.open(url, timeout=WAIT_S) as resp:
        return json.load(resp)


def _request(url: str, method: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, JSON body) of a request with a JSON body, as the dashboard's page sends it."""
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with _OPENER.open(request, timeout=WAIT_S) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# -- what the dashboard serves, and what plain Optuna reads ------------------------------------


def _served_trials(url: str, study_name: str) -> list[dict[str, Any]]:
    studies = _get_json(url + "api/studies")["study_summaries"]
    (study_id,) = [s["study_id"] for s in studies if s["study_name"] == study_name]
    return list(_get_json(url + f"api/studies/{study_id}")["trials"])


def _json_number(value: float) -> float | str:
    """A float as optuna-dashboard serializes it (non-finite values as strings)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _as_served(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name.capitalize(),
        "values": None if trial.values is None else [_json_number(v) for v in trial.values],
        "intermediate_values": [
            {"step": step, "value": _json_number(value)}
            for step, value in sorted(trial.intermediate_values.items())
        ],
        "params": {name: str(value) for name, value in trial.params.items()},
    }


def _project(served: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": served["number"],
        "state": served["state"],
        "values": served.get("values"),
        "intermediate_values": served["intermediate_values"],
        "params": {p["name"]: p["param_external_value"] for p in served["params"]},
    }


def _as_optuna_reads(exp: Path) -> list[dict[str, Any]]:
    study_name = json.loads((exp / "experiment.json").read_text())["study_name"]
    study = optuna.load_study(study_name=study_name, storage=journal_storage(exp / JOURNAL))
    return [_as_served(t) for t in sorted(study.trials, key=lambda t: t.number)]


# -- `hpsearch dashboard` as a subprocess ---------------------------------------------------


class _DashboardCommand:
    """`hpsearch dashboard ARGS` in a child process that leads its own process group."""

    def __init__(self, args: list[str], env: dict[str, str], tmp_path: Path) -> None:
        self.stderr_path = tmp_path / f"dashboard-{time.monotonic_ns()}.stderr"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hpsearch.cli", "dashboard", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,  # its server joins this group: one killpg ends all
            )
        self._lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line)
        self._lines.put("")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def url_once_serving(self) -> str:
        """The URL it prints, once it answers there; the ssh hint follows it."""
        try:
            first = self._lines.get(timeout=WAIT_S)
            hint = self._lines.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail(f"hpsearch dashboard printed nothing in {WAIT_S:.0f} s: {self.stderr()}")
        assert " at http://127.0.0.1:" in first and "read-only" in first, first + self.stderr()
        assert "ssh -L" in hint, hint
        url = first.split(" at ", 1)[1].split()[0]
        assert isinstance(_get_json(url + "api/meta"), dict)
        return url

    def server(self) -> psutil.Process:
        """Its one child, the optuna-dashboard server."""
        (child,) = psutil.Process(self.proc.pid).children()
        assert "hpsearch.dashboard" in " ".join(child.cmdline())
        return child

    def group_members(self) -> list[psutil.Process]:
        """Live (not zombie) processes left in its process group."""
        alive = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if (
                    os.getpgid(process.pid) == self.proc.pid
                    and process.status() != psutil.STATUS_ZOMBIE
                ):
                    alive.append(process)
        return alive

    def wait_for_empty_group(self) -> list[psutil.Process]:
        deadline = time.monotonic() + WAIT_S
        while (left := self.group_members()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def start(hpsearch_environ: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start `hpsearch dashboard ARGS`; every one started is killed at teardown."""
    started: list[_DashboardCommand] = []

    def _start(*args: str) -> _DashboardCommand:
        command = _DashboardCommand(list(args), hpsearch_environ, tmp_path)
        started.append(command)
        return command

    yield _start
    for command in started:
        command.kill_group()


def _listening(process: psutil.Process) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in process.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url + "api/meta", timeout=2):
            return True
    except OSError:
        return False


# -- a real sweep ---------------------------------------------------------------------------


def _sweep_space(tmp_path: Path) -> Path:
    """smoke.yaml as a grid over four seeds, two trials at a time, ASHA on."""
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = "dash"
    doc["search"].update(sampler="grid", max_concurrent=2)
    doc["search"].pop("num_samples")
    doc["parameters"] = {
        "train.seed": {"type": "categorical", "choices": [0, 1, 2, 3]},
        "train.lr": {"type": "categorical", "choices": [3.0e-3]},
    }
    path = tmp_path / "dash.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# Four tiny trials, two at a time: well under a minute on 2 quiet cores; the limits are sized
# for a loaded machine.
@pytest.mark.timeout(1800)
def test_serves_a_real_sweeps_study_exactly_as_optuna_reads_it(
    tmp_path: Path, hpsearch_environ: dict[str, str], records: Any, start: Any
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "sweep", str(_sweep_space(tmp_path))]
        + ["--storage-path", str(tmp_path), "--num-cpus", "2", "--no-report"],
        cwd=REPO,
        env={**hpsearch_environ, "HPSEARCH_FAULT": _FAULT},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    exp = tmp_path / "dash"
    statuses = sorted(r["status"] for r in records(exp).values())
    assert len(statuses) == 4 and statuses.count("failed") == 1, statuses
    journal_before = (exp / JOURNAL).read_bytes()

    board = start(str(exp), "--port", "0")
    url = board.url_once_serving()
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    # bound to 127.0.0.1 only (the default), by the server child of `hpsearch dashboard`
    assert _listening(board.server()) == {("127.0.0.1", port)}

    served = [_project(t) for t in _served_trials(url, "dash")]
    expected = _as_optuna_reads(exp)
    assert served == expected
    assert len(served) == 4
    # a real sweep's study: trials with intermediate values, and the failed one as FAIL
    assert any(t["intermediate_values"] for t in served), served
    assert [t["state"] for t in served].count("Fail") == 1, served
    assert all(t["params"] for t in served), served  # the grid's point, as Optuna holds it

    # read-only: the page's delete and tell buttons change nothing in the journal
    assert _request(url + "api/studies/0", "DELETE")[0] == 405
    status, body = _request(url + "api/trials/0/tell", "POST", {"state": "Fail"})
    assert status == 405 and "read-only" in body["reason"]
    assert (exp / JOURNAL).read_bytes() == journal_before
    assert [_project(t) for t in _served_trials(url, "dash")] == expected

    # Ctrl-C in a terminal (SIGINT to the whole group): exit 0, every process of it gone
    os.killpg(board.proc.pid, signal.SIGINT)
    assert board.proc.wait(timeout=WAIT_S) == 0, board.stderr()
    assert board.wait_for_empty_group() == []
    assert not _answers(url)
    assert "Traceback" not in board.stderr(), board.stderr()


# -- a study written with plain Optuna ------------------------------------------------------


def _experiment(folder: Path, *, with_study: bool = True) -> Path:
    """An experiment folder as a sweep leaves it, its study written with plain Optuna."""
    folder.mkdir(parents=True)
    experiment = Experiment(
        path=folder,
        name=folder.name,
        study_name=folder.name,
        space="",
        metric="dev_overall",
        mode="max",
        objectives=[],
        total_trials=3,
        trial_overrides={},
        settings=SweepSettings(),
    )
    experiment.save()
    if with_study:
        study = optuna.create_study(
            study_name=folder.name, storage=experiment.storage(), direction="maximize"
        )
        lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
        for state in ("COMPLETE", "PRUNED", "FAIL"):
            trial = study.ask({"train.lr": lr})
            trial.report(0.25, 1)
            trial.report(0.5, 2)
            if state == "COMPLETE":
                study.tell(trial, 0.75)
            else:
                study.tell(trial, state=optuna.trial.TrialState[state])
    return folder


def test_serves_a_hand_made_study_and_stops_on_sigterm(tmp_path: Path, start: Any) -> None:
    exp = _experiment(tmp_path / "made")
    board = start(str(exp), "--port", "0")
    url = board.url_once_serving()
    served = [_project(t) for t in _served_trials(url, "made")]
    assert served == _as_optuna_reads(exp)
    assert [t["state"] for t in served] == ["Complete", "Pruned", "Fail"]
    assert served[1]["intermediate_values"] == [
        {"step": 1, "value": 0.25},
        {"step": 2, "value": 0.5},
    ]
    board.proc.send_signal(signal.SIGTERM)
    # the server is stopped first; then the command ends as a SIGTERM ends it
    assert board.proc.wait(timeout=WAIT_S) == -signal.SIGTERM, board.stderr()
    assert board.wait_for_empty_group() == []
    assert not _answers(url)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_the_server_does_not_outlive_a_killed_hpsearch_dashboard(
    tmp_path: Path, start: Any
) -> None:
    board = start(str(_experiment(tmp_path / "made")), "--port", "0")
    url = board.url_once_serving()
    server = board.server()
    board.proc.send_signal(signal.SIGKILL)  # no handler runs: the kernel's signal does it
    assert board.proc.wait(timeout=WAIT_S) == -signal.SIGKILL
    with contextlib.suppress(psutil.NoSuchProcess):
        server.wait(timeout=10)
    assert board.wait_for_empty_group() == []
    assert not _answers(url)


def _refused(board: _DashboardCommand) -> str:
    assert board.proc.wait(timeout=WAIT_S) == 2, board.stderr()
    stderr = board.stderr().strip()
    assert stderr.startswith("error: ") and "\n" not in stderr, stderr
    return stderr


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("not an experiment", "is not an hpsearch experiment folder"),
        ("no journal", "has no Optuna study yet"),
        ("no study in the journal", "holds no study named"),
        ("garbage journal", "is unreadable"),
    ],
)
def test_refuses_a_folder_with_no_study_in_one_line(
    tmp_path: Path, start: Any, case: str, expected: str
) -> None:
    folder = tmp_path / "exp"
    if case == "not an experiment":
        folder.mkdir()
        (folder / JOURNAL).write_text("")
    elif case != "missing":
        _experiment(folder, with_study=False)
    if case == "no study in the journal":
        optuna.create_study(study_name="another", storage=journal_storage(folder / JOURNAL))
    if case == "garbage journal":
        (folder / JOURNAL).write_text("not a journal\nnor this\n")
    listing = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    assert expected in _refused(start(str(folder), "--port", "0"))
    # nothing written: no journal created where there was none
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == listing


def test_refuses_a_busy_port_a_bad_port_and_a_remote_host_unless_asked(
    tmp_path: Path, start: Any
) -> None:
    exp = str(_experiment(tmp_path / "made"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"127.0.0.1:{port}" in _refused(start(exp, "--port", str(port)))
    assert "out of range" in _refused(start(exp, "--port", "70000"))
    for host in ("0.0.0.0", "192.168.1.5"):
        stderr = _refused(start(exp, "--port", "0", "--host", host))
        assert "not a loopback address" in stderr and "--allow-remote" in stderr
    # allowed, but no address of this machine (TEST-NET-1, RFC 5737)
    stderr = _refused(start(exp, "--port", "0", "--host", "192.0.2.1", "--allow-remote"))
    assert "cannot bind the dashboard to 192.0.2.1:0" in stderr
    assert "invalid int value: 'eighty'" in _refused(start(exp, "--port", "eighty"))


def test_binds_a_remote_host_only_when_asked_and_warns(tmp_path: Path, start: Any) -> None:
    board = start(
        str(_experiment(tmp_path / "made")), "--port", "0", "--host", "0.0.0.0", "--allow-remote"
    )
    deadline = time.monotonic() + WAIT_S
    while "warning:" not in board.stderr() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "warning: the dashboard listens on 0.0.0.0:" in board.stderr(), board.stderr()
    port = int(board.stderr().split("0.0.0.0:", 1)[1].split()[0])
    assert _listening(board.server()) == {("0.0.0.0", port)}
    assert _answers(f"http://127.0.0.1:{port}/")
    board.proc.send_signal(signal.SIGINT)
    assert board.proc.wait(timeout=WAIT_S) == 0, board.stderr()
    assert board.wait_for_empty_group() == []
