"""Shared test helpers: where the CS224N data is, and an offline Hugging Face stack."""

from __future__ import annotations

import os
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
