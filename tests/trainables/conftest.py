"""Fixtures of the trainables tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from trainables.minbert.config import TrialConfig, load_trial_config

# A 2-layer, hidden-32 random-init minBERT on 48 synthetic training examples, batches of 8
# (6 steps an epoch): a whole trial with its evaluations trains in seconds.
TINY_TRIAL = (
    "model.checkpoint=random",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "model.dropout=0.1",
    "data.max_length=32",
    "data.max_train_examples=48",
    "data.max_eval_examples=24",
    "data.train_eval_examples=16",
    "train.batch_size=8",
    "train.lr=1e-3",
)


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """The tiny trial's overrides, its token cache in the test's own folder."""
    return [*TINY_TRIAL, f"data.cache_dir={tmp_path / 'tokens'}"]


@pytest.fixture
def tiny_trial(tiny_overrides: list[str]) -> Callable[..., TrialConfig]:
    """`tiny_trial(*extra)`: the tiny trial's config with `extra` overrides on top."""

    def make(*extra: str) -> TrialConfig:
        return load_trial_config(None, [*tiny_overrides, *extra])

    return make
