"""The fault hook of the reliability tests: inert unless HPSEARCH_FAULT is set, refuses
malformed values, and fires through trainer callbacks (the end-to-end faults are in
tests/hpsearch/test_reliability.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainables.errors import ConfigError
from trainables.minbert import faults
from trainables.minbert.config import load_trial_config
from trainables.minbert.trainer import MultitaskTrainer


def _trainer(seed: int, out_dir: Path) -> MultitaskTrainer:
    """A trainer before setup: enough for the injector, which reads the seed and run folder."""
    return MultitaskTrainer(load_trial_config(None, [f"train.seed={seed}"]), out_dir)


def _injectors(trainer: MultitaskTrainer) -> list[faults.FaultInjector]:
    return [cb for cb in trainer.callbacks if isinstance(cb, faults.FaultInjector)]


def _poisoned(injector: faults.FaultInjector, step: int, seed: int, tmp_path: Path) -> bool:
    losses = {"sst": torch.tensor(1.0), "sts": torch.tensor(2.0)}
    out = injector.on_losses(_trainer(seed, tmp_path), step, losses)
    return all(bool(torch.isnan(loss)) for loss in out.values())


def test_fault_hook_is_inert_unless_set_and_refuses_malformed_values(monkeypatch, tmp_path):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.armed() == []
    assert _injectors(_trainer(0, tmp_path)) == []  # the trainer adds no injector
    inert = faults.FaultInjector(faults.armed())
    assert not _poisoned(inert, 1, seed=0, tmp_path=tmp_path)
    inert.on_step_begin(_trainer(0, Path("/nonexistent")), 1)  # does nothing
    parsed = faults.parse("nan_at_step:3@seed=1; sleep_in_checkpoint:0.5@seed=2,step=8")
    assert parsed == [
        faults.Fault("nan_at_step", 3.0, seed=1),
        faults.Fault("sleep_in_checkpoint", 0.5, seed=2, step=8),
    ]
    monkeypatch.setenv(faults.ENV, "nan_at_step:3@seed=1")
    (injector,) = _injectors(_trainer(1, tmp_path))
    assert _poisoned(injector, 3, seed=1, tmp_path=tmp_path)
    assert not _poisoned(injector, 3, seed=2, tmp_path=tmp_path)
    assert not _poisoned(injector, 2, seed=1, tmp_path=tmp_path)
    for bad in (
        "explode:1",
        "nan_at_step",
        "nan_at_step:0",
        "nan_at_step:1.5",
        "kill_at_step:2@seed=x",
        "kill_at_step:2@rank=1",
        "raise_at_step:2@step=2",
    ):
        with pytest.raises(ConfigError, match="HPSEARCH_FAULT"):
            faults.parse(bad)
    monkeypatch.setenv(faults.ENV, "raise_at_step:2@seed=5")
    trainer = _trainer(5, tmp_path)
    (injector,) = _injectors(trainer)
    injector.on_step_begin(trainer, 1)  # not its step
    with pytest.raises(faults.InjectedFault, match="raise_at_step 2"):
        injector.on_step_begin(trainer, 2)
    assert (tmp_path / ".fault-raise_at_step").is_file()


def test_describe_names_the_armed_faults_in_one_line():
    text = "nan_at_step:3@seed=1; sleep_in_checkpoint:0.5@seed=2,step=8; sleep_in_report:2"
    assert faults.describe(faults.parse(text)) == text
    assert faults.describe([]) == ""


def test_report_and_checkpoint_sleeps_leave_their_markers(tmp_path):
    armed = faults.parse("sleep_in_report:0; sleep_in_checkpoint:0@step=4")
    faults.before_report(armed, tmp_path / "exp")
    assert (tmp_path / "exp" / ".fault-sleep_in_report").is_file()
    injector = faults.FaultInjector(armed)
    trainer = _trainer(0, tmp_path / "run")
    injector.on_checkpoint_staged(trainer, 3, tmp_path / "staging")
    assert not (tmp_path / "run" / ".fault-sleep_in_checkpoint").exists()
    injector.on_checkpoint_staged(trainer, 4, tmp_path / "staging")
    assert (tmp_path / "run" / ".fault-sleep_in_checkpoint").is_file()
