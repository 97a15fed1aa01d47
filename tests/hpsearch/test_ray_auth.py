"""Ray's token authentication stays on for a real sweep, and Ctrl-C ends with `hpsearch resume`.

No test here reads or writes the user's ~/.ray/auth_token: one runs with a HOME of its own,
the other with this test's own token (conftest: RAY_AUTH_TOKEN_PATH).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Generous for a loaded 2-core machine: a quiet one starts the first trial in about 10 s.
TRIAL_START_TIMEOUT = 240
JOIN_TIMEOUT = 180


def _space(tmp_path: Path, name: str, samples: int, train_examples: int) -> Path:
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = name
    doc["search"].update(num_samples=samples, max_concurrent=1, scheduler="none")
    doc["search"].pop("asha")
    doc["base"]["data.max_train_examples"] = train_examples
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Sweep:
    """`hpsearch sweep` in its own session (its Ray in a short RAY_TMPDIR); whatever is left
    of its process tree is killed by `kill()`."""

    def __init__(self, tmp_path: Path, env: dict[str, str], space: Path) -> None:
        self.ray_tmp = tempfile.mkdtemp(prefix="hps-auth-")  # Ray's socket paths: <108 bytes
        self.env = {**env, "RAY_TMPDIR": self.ray_tmp}
        self.stderr_path = tmp_path / "sweep.stderr"
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hpsearch.cli",
                    "sweep",
                    str(space),
                    "--storage-path",
                    str(tmp_path),
                    "--num-cpus",
                    "1",
                    "--no-report",
                ],
                cwd=REPO,
                env=self.env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.seen: dict[int, psutil.Process] = {}

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        self.seen.update((p.pid, p) for p in found)
        return found

    def kill(self) -> None:
        """SIGKILL the sweep's process group, then every process it started that is still
        alive (Ray's own processes make their own groups)."""
        self.descendants()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        for p in self.seen.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(list(self.seen.values()), timeout=30)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture
def sweeps() -> Iterator[list[Sweep]]:
    started: list[Sweep] = []
    yield started
    for sweep in started:
        sweep.kill()


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _trial_processes(sweep: Sweep) -> list[psutil.Process]:
    """The trials' Ray worker processes: their command line starts with "ray::" (Ray names
    a worker by what it runs: `ray::ImplicitFunc.train` for a trial of a function trainable)."""
    return [p for p in sweep.descendants() if " ".join(_cmdline(p)).startswith("ray::")]


def _wait_for_a_running_trial(sweep: Sweep, exp: Path) -> list[psutil.Process]:
    deadline = time.monotonic() + TRIAL_START_TIMEOUT
    while time.monotonic() < deadline:
        assert sweep.proc.poll() is None, sweep.stderr_path.read_text()[-3000:]
        metrics = list(exp.glob("runs/*/metrics.jsonl"))
        workers = [
            p
            for p in _trial_processes(sweep)
            if any(name in " ".join(_cmdline(p)) for name in ("ImplicitFunc", "tune_trial"))
        ]
        if metrics and workers:
            return workers
        time.sleep(0.5)
    raise AssertionError(f"no trial running after {TRIAL_START_TIMEOUT} s")


def _gcs_address(sweep: Sweep) -> str:
    for p in sweep.descendants():
        for arg in _cmdline(p):
            if arg.startswith("--gcs-address="):
                return arg.split("=", 1)[1]
    raise AssertionError("no Ray process of the sweep names its GCS address")


_JOIN = "import sys, ray; ray.init(address=sys.argv[1]); print('joined')"


def _join(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _JOIN, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=JOIN_TIMEOUT,
    )


def _refused(address: str, env: dict[str, str], log: Path) -> str:
    """Run a driver that tries to join `address`; return its output once the cluster has
    refused its token ("InvalidAuthToken"), once it exits, or after JOIN_TIMEOUT.

    Ray's driver retries a refused connection for a while before it gives up (about 20 s
    on a quiet machine, longer on a loaded one): the refusal itself is what this checks,
    so the driver is killed as soon as it has been refused."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _JOIN, address],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    deadline = time.monotonic() + JOIN_TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if "InvalidAuthToken" in log.read_text(errors="replace"):
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    return log.read_text(errors="replace")


def test_trials_run_with_token_auth_and_a_wrong_token_cannot_join(
    tmp_path, hpsearch_environ, sweeps
):
    """While a real sweep's trial runs: every process of its Ray (trial workers, raylet,
    GCS) has RAY_AUTH_MODE unset or `token`, never `disabled`; a driver with a wrong token
    is refused by that cluster, and one with the sweep's token joins it.

    As on a fresh machine: a HOME without ~/.ray/auth_token and no token variable, so the
    sweep's new local Ray writes the token there itself."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in hpsearch_environ.items() if k != "RAY_AUTH_TOKEN_PATH"}
    env["HOME"] = str(home)
    # what HOME also decides: keep DeepSpeed's compiled ops where they are
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    exp = tmp_path / "auth"
    # trials long enough (minutes) that the cluster outlives the checks; killed after them
    sweep = Sweep(tmp_path, env, _space(tmp_path, "auth", 2, 4096))
    sweeps.append(sweep)
    workers = _wait_for_a_running_trial(sweep, exp)
    ray_processes = [p for p in sweep.descendants() if _cmdline(p)]
    assert any("raylet" in " ".join(_cmdline(p)) for p in ray_processes)
    for p in {*workers, *ray_processes}:
        try:
            mode = p.environ().get("RAY_AUTH_MODE")  # /proc/PID/environ
        except psutil.NoSuchProcess:
            continue
        assert mode in (None, "token"), (mode, _cmdline(p)[:3])
    assert workers, "no trial process found"
    # trials run at the driver's priority, not Ray's default niceness 15 for workers
    assert [p.nice() for p in workers] == [os.nice(0)] * len(workers)

    address = _gcs_address(sweep)
    outsider = {
        k: v
        for k, v in sweep.env.items()
        if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR")
    }
    wrong = _refused(
        address,
        {**outsider, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
        tmp_path / "wrong-token.log",
    )
    assert "joined" not in wrong, wrong[-3000:]
    assert "InvalidAuthToken" in wrong, wrong[-3000:]  # refused, not unreachable
    # the control: the same call with the sweep's token does join
    token = home / ".ray" / "auth_token"
    assert token.is_file(), "the sweep's Ray wrote no token"
    right = _join(
        address, {**outsider, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    )
    assert right.returncode == 0 and "joined" in right.stdout, right.stderr[-3000:]


def test_ctrl_c_ends_with_the_resume_command_and_resume_completes(
    tmp_path, hpsearch_environ, sweeps, cli, records
):
    """SIGINT to `hpsearch sweep` once its first trial runs: exit 130, the last line is
    `hpsearch resume EXP_DIR` (not Ray's `Tuner.restore(...)` hint), and that command then
    finishes the sweep."""
    exp = tmp_path / "ctrlc"
    sweep = Sweep(tmp_path, hpsearch_environ, _space(tmp_path, "ctrlc", 2, 64))
    sweeps.append(sweep)
    _wait_for_a_running_trial(sweep, exp)
    sweep.proc.send_signal(signal.SIGINT)
    assert sweep.proc.wait(timeout=TRIAL_START_TIMEOUT) == 130, sweep.stderr_path.read_text()
    err = sweep.stderr_path.read_text()
    assert err.strip().splitlines()[-1] == f"hpsearch resume {exp}", err[-3000:]
    assert "Tuner.restore" not in err, err[-3000:]
    sweep.kill()  # nothing of its Ray may outlive it
    assert not [p for p in sweep.seen.values() if p.is_running() and p.status() != "zombie"]

    cli("resume", str(exp), "--num-cpus", "1", "--no-report", timeout=600)
    recs = records(exp)
    assert len(recs) == 2 and all(r["status"] == "finished" for r in recs.values()), recs


def test_token_authentication_is_turned_on_even_against_an_opt_out(monkeypatch, capsys):
    """RAY_AUTH_MODE unset: hpsearch turns token authentication on for what it starts or
    joins. Set to `disabled` by the user: turned on all the same, with one warning line on
    stderr saying so."""
    from hpsearch import driver

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    driver.keep_token_authentication()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert capsys.readouterr().err == ""

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    driver.keep_token_authentication()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: RAY_AUTH_MODE=disabled ignored: "), (
        err
    )
    assert "anyone who can reach this machine could run code on it" in err


@pytest.mark.parametrize("mode", ["off", "", "none", "false", "Disabled", "tokens"])
def test_any_value_ray_reads_as_off_is_turned_into_token(monkeypatch, capsys, mode):
    """Ray turns authentication on only for RAY_AUTH_MODE=token: every other value it reads
    as off. Each is overridden like `disabled`, with one warning line naming it."""
    from hpsearch import driver

    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    driver.keep_token_authentication()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: RAY_AUTH_MODE={mode} ignored: "), err


@pytest.mark.parametrize("mode", ["token", "TOKEN", " token "])
def test_token_in_any_spelling_is_kept_on_without_a_warning(monkeypatch, capsys, mode):
    from hpsearch import driver

    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    driver.keep_token_authentication()
    assert os.environ["RAY_AUTH_MODE"] == "token"  # Ray's own spelling
    assert capsys.readouterr().err == ""
