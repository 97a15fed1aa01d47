"""Helpers for tests that run the real `hpsearch` command (Ray, Optuna, DeepSpeed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def hpsearch_env(child_environ: dict[str, str]) -> dict[str, str]:
    """`child_environ` (tests/conftest.py) plus what a test's `hpsearch` command wants."""
    env = dict(child_environ)
    env.update(
        {
            "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
            "RAY_DEDUP_LOGS": "0",
            "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_cli(
    args: list[str],
    env: dict[str, str],
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"hpsearch {' '.join(args)} exited {proc.returncode}:\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def trial_records(exp: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((exp / "trials").glob("*.json"))}


@pytest.fixture
def records():
    return trial_records


@pytest.fixture
def hpsearch_environ(child_environ):
    return hpsearch_env(child_environ)


@pytest.fixture
def cli(hpsearch_environ):
    def _run(*args: str, **kw):
        return run_cli(list(args), hpsearch_environ, **kw)

    return _run


# ------------------------------------------------------------------ commands that get killed
class RaySession:
    """The `hpsearch` commands of one test and the Ray processes they start, each under the
    test's own short RAY_TMPDIR (Ray's socket paths must stay under 108 bytes), so that this
    test's processes, and only those, can be found and SIGKILLed: `ray stop` would stop every
    other Ray on the machine too."""

    def __init__(self, ray_tmp: Path, base_env: dict[str, str]) -> None:
        self.ray_tmp = ray_tmp
        self.base_env = base_env
        self.started: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **self.base_env,
            "PYTHONUNBUFFERED": "1",
            "RAY_TMPDIR": str(self.ray_tmp),
            "RAY_DEDUP_LOGS": "0",
            **extra,
        }

    def start(self, args: list[str], log: Path, **extra: str) -> subprocess.Popen:
        """Start `hpsearch ARGS` in its own process group, output to `log` (a pipe could
        fill up and stall it)."""
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hpsearch.cli", *args],
                cwd=REPO,
                env=self.env(**extra),
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc.log = log  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    def run(self, args: list[str], log: Path, timeout: float, **extra: str) -> str:
        """Run `hpsearch ARGS` to its end; its output, or AssertionError on failure."""
        proc = self.start(args, log, **extra)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"hpsearch {args[0]} still running after {timeout} s") from None
        out = log.read_text()
        assert proc.returncode == 0, f"hpsearch {args[0]} exited {proc.returncode}:\n{out[-6000:]}"
        return out

    def wait_for(self, predicate, timeout: float, what: str, proc: subprocess.Popen):
        """Poll `predicate` until it returns something true; fail if `proc` ends first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = predicate()
            if found:
                return found
            if proc.poll() is not None:
                raise AssertionError(
                    f"process ended (exit {proc.returncode}) before {what}:\n"
                    f"{proc.log.read_text()[-4000:]}"  # type: ignore[attr-defined]
                )
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def processes(self) -> list:
        """Every live process of this session: the commands started, Ray's processes (their
        command lines name RAY_TMPDIR) and everything those started."""
        import psutil

        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.ray_tmp) in arg for arg in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
        for popen in self.started:
            try:
                if popen.poll() is None:
                    found[popen.pid] = psutil.Process(popen.pid)
            except psutil.Error:
                pass
        for proc in list(found.values()):
            try:
                found.update((child.pid, child) for child in proc.children(recursive=True))
            except psutil.Error:
                pass
        return [p for p in found.values() if p.pid != os.getpid()]

    def kill_all(self) -> None:
        """SIGKILL every process of this session (all at once, so that nothing respawns)."""
        import psutil

        for _ in range(3):  # a process may start a child between the listing and the kill
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=30)
        for popen in self.started:
            popen.wait(timeout=30)


@pytest.fixture
def ray_session(child_environ):
    ray_tmp = Path(tempfile.mkdtemp(prefix="hps-ray-", dir="/tmp"))
    session = RaySession(ray_tmp, child_environ)
    try:
        yield session
    finally:
        session.kill_all()
        shutil.rmtree(ray_tmp, ignore_errors=True)
