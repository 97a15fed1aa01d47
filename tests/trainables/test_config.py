"""The typed trial config: defaults in one place, overrides parsed, bad input refused."""

from __future__ import annotations

import pytest

from trainables.errors import ConfigError
from trainables.minbert.config import (
    TrialConfig,
    build_trial_config,
    known_keys,
    load_trial_config,
    parse_override,
)


def test_defaults_and_flat_keys_round_trip():
    cfg = TrialConfig()
    flat = cfg.to_flat_dict()
    assert flat["train.lr"] == 1e-5 and flat["model.dropout"] == 0.3
    assert set(flat) == known_keys()
    assert build_trial_config(flat=flat) == cfg


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 3.0e-5\n  epochs: 2\nextensions:\n  pcgrad: true\n")
    cfg = load_trial_config(path, ["train.lr=2e-5", "model.pair_encoding=cross"])
    assert cfg.train.lr == 2e-5 and cfg.train.epochs == 2 and cfg.extensions.pcgrad
    assert cfg.model.pair_encoding == "cross"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.lrr=1e-5", "did you mean 'train.lr'"),
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("model.dropout=1.5", "model.dropout"),
        ("extensions.task_sampling=random", "extensions.task_sampling"),
        ("nosuchsection.x=1", "valid sections"),
        ("train.lr", "section.key=value"),
        ("train.deepspeed.zero_stage=5", "zero_stage"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, needle):
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, [override])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_incompatible_combinations_refused():
    with pytest.raises(ConfigError, match="ZeRO-3"):
        load_trial_config(None, ["extensions.pcgrad=true", "train.deepspeed.zero_stage=3"])
    with pytest.raises(ConfigError, match="pair_encoding=siamese"):
        load_trial_config(None, ["extensions.cosine_sts=true", "model.pair_encoding=cross"])


@pytest.mark.parametrize(
    "text,needle",
    [
        ("train: [1, 2\n", "invalid YAML at line"),
        ("- a\n- b\n", "expected a mapping"),
        ("train:\n  lr: fast\n", "train.lr"),
        ("trian:\n  lr: 1.0e-5\n", "unknown key 'trian'"),
    ],
)
def test_bad_files(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_trial_config(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_trial_config("/nonexistent/run.yaml")


def test_override_values_are_yaml_scalars():
    assert parse_override("extensions.pcgrad=true") == ("extensions.pcgrad", True)
    assert parse_override("train.lr=2e-5") == ("train.lr", 2e-5)
    assert parse_override("data.data_dir=null") == ("data.data_dir", None)
