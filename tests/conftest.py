"""Shared test helpers: where the CS224N data is, and an offline Hugging Face stack."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

# Reference libraries (transformers, sentence-transformers) must never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def cs224n_dir() -> Path | None:
    """The CS224N data folder ($HPSEARCH_CS224N_DIR, default <repo>/../shared/data/cs224n).

    None when it is absent, so that tests can fall back to built-in sentences.
    """
    folder = Path(os.environ.get("HPSEARCH_CS224N_DIR", REPO_ROOT.parent / "shared/data/cs224n"))
    return folder if (folder / "ids-sst-dev.csv").is_file() else None


@pytest.fixture(scope="session")
def cs224n_path() -> Path | None:
    """Fixture form of `cs224n_dir()`."""
    return cs224n_dir()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The bundled all-MiniLM-L6-v2 checkpoint folder."""
    from trainables.minbert.hf_folder import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="module")
def torch_one_thread():
    """Run a module's torch ops on one thread (opt in with
    `pytestmark = pytest.mark.usefixtures("torch_one_thread")`).

    Tiny test models gain nothing from intra-op threads, and on a busy 2-core machine two
    OpenMP threads waiting on each other make them several times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# What a child process (an `hpsearch` command, a Ray probe) must not inherit from this one:
# the fault-injection hook, torch.distributed rendezvous variables (an in-process DeepSpeed
# test sets them and holds the port) and Ray's authentication settings (a child hpsearch
# must turn token authentication on by itself).
NOT_INHERITED = (
    "HPSEARCH_FAULT",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
)


@pytest.fixture
def child_environ(tmp_path: Path) -> dict[str, str]:
    """The environment of a child process: none of NOT_INHERITED, no hub access, and a Ray
    token of this test's own (beside tmp_path, so that listings of tmp_path stay as the test
    made them): no test reads or writes ~/.ray/auth_token, which a fresh machine lacks."""
    token = tmp_path.parent / f"{tmp_path.name}.ray_auth_token"
    if not token.exists():
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update({"RAY_AUTH_TOKEN_PATH": str(token), "HF_HUB_OFFLINE": "1"})
    return env
