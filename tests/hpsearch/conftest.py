"""Helpers for tests that run the real `hpsearch` command (Ray, Optuna, DeepSpeed)."""

from __future__ import annotations

import json
import subprocess
import sys
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
