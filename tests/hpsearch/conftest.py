"""Helpers for tests that run the real `hpsearch` command (Ray, Optuna, DeepSpeed)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# torch.distributed rendezvous variables: an in-process DeepSpeed test sets them in this
# process (and holds the port); a child `hpsearch train` must pick its own.
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


# Ray's token authentication: the mode and where the token comes from. A child hpsearch gets
# neither mode nor token from this process: it must turn authentication on by itself.
RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ray_token_file(tmp_path: Path) -> Path:
    """This test's own Ray token (beside tmp_path, so that listings of tmp_path stay as the
    test made them): no test reads or writes ~/.ray/auth_token, which a fresh machine lacks."""
    token = tmp_path.parent / f"{tmp_path.name}.ray_auth_token"
    if not token.exists():
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
    return token


def hpsearch_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*RENDEZVOUS, *RAY_AUTH)}
    env.update(
        {
            "RAY_AUTH_TOKEN_PATH": str(ray_token_file(tmp_path)),
            "HF_HUB_OFFLINE": "1",
            "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
            "RAY_DEDUP_LOGS": "0",
            "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_cli(
    args: list[str],
    tmp_path: Path,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", *args],
        cwd=REPO,
        env=hpsearch_env(tmp_path),
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
def cli(tmp_path):
    def _run(*args: str, **kw):
        return run_cli(list(args), tmp_path, **kw)

    return _run


@pytest.fixture
def hpsearch_environ(tmp_path):
    return hpsearch_env(tmp_path)
