"""The one pre-flight of `hpsearch train` and `hpsearch sweep`: refuse bad input before anything
is launched or written.

Each problem is one `ConfigError` line (exit status 2 in the CLI):
  - sweep settings that could never run (a trial bigger than the machine, a bad address);
  - a malformed `HPSEARCH_FAULT` (the fault-injection test hook);
  - a --data-dir that is not there, overrides that do not fit the trial config;
  - a checkpoint folder with a missing or truncated weights file or a malformed config.json,
    a missing model.vocab_file;
  - data files without their columns or without a usable row.
The data check loads (tokenises and caches) the data once, in the driver: every trial, and the
run of `hpsearch train`, then reads the shared token cache.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.settings import SMOKE_OVERRIDES, SweepSettings
from trainables.errors import ConfigError
from trainables.minbert import faults

if TYPE_CHECKING:
    from hpsearch.space import SearchSpace
    from trainables.minbert.config import ModelConfig, TrialConfig
    from trainables.minbert.tokenizer import WordPieceTokenizer

__all__ = [
    "check_settings",
    "check_sweep",
    "check_trial",
    "data_dir_override",
    "smoke_overrides",
    "sweep_trial_overrides",
]

_ADDRESS_RE = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")
_CHECKPOINT_KEY = "model.checkpoint"


# ---------------------------------------------------------------------------- both commands
def smoke_overrides() -> dict[str, Any]:
    """What --smoke-test changes (a copy of the one definition)."""
    return dict(SMOKE_OVERRIDES)


def data_dir_override(data_dir: str) -> dict[str, str]:
    """{"data.data_dir": absolute path} for --data-dir; refuses a folder that is not there."""
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"--data-dir {folder} does not exist: pass the folder holding the "
            "CS224N files (see `hpsearch data download`)"
        )
    return {"data.data_dir": str(folder.resolve())}


def check_trial(cfg: TrialConfig, checkpoints: Iterable[str] = ()) -> list[str]:
    """Check the checkpoint folders (cfg's and `checkpoints`), the vocabulary and the data
    files of one trial config; returns the data's notes. Nothing is written but the token
    cache, which the run then reuses."""
    from trainables.minbert.data import load_multitask_data

    faults.armed()  # a test hook; a malformed value is refused like any other input
    for name in sorted({cfg.model.checkpoint, *checkpoints}):
        _check_checkpoint(name)
    data = load_multitask_data(cfg.data, _tokenizer(cfg.model), cfg.model.pair_encoding)
    return list(data.notes)


def _check_checkpoint(name: str) -> None:
    """Load a checkpoint folder (or find MiniLM's): a missing file, a truncated weights file
    or a malformed config.json fails here."""
    from trainables.minbert.hf_folder import minilm_dir
    from trainables.minbert.model import BertModel

    if name == "random":
        return
    if name == "minilm":
        minilm_dir()
        return
    BertModel.from_pretrained(name)


def _tokenizer(model: ModelConfig) -> WordPieceTokenizer:
    """The model's tokenizer, refusing a model.vocab_file that is not there."""
    from trainables.minbert.tokenizer import tokenizer_for

    if model.checkpoint == "random" and model.vocab_file and not Path(model.vocab_file).is_file():
        raise ConfigError(
            f"model.vocab_file {model.vocab_file} does not exist: pass a WordPiece "
            "vocab.txt, or leave it unset to use MiniLM's"
        )
    return tokenizer_for(model)


# ---------------------------------------------------------------------------- sweeps
def check_settings(settings: SweepSettings) -> None:
    """Refuse settings that could never run (a trial bigger than the machine, say)."""
    if settings.max_failures < 0:
        raise ConfigError(
            f"--max-failures {settings.max_failures}: give a number >= 0 "
            "(retries of a failed trial from its last checkpoint)"
        )
    if settings.time_limit_per_trial is not None and not settings.time_limit_per_trial > 0:
        raise ConfigError(
            f"--time-limit-per-trial {settings.time_limit_per_trial:g}: give a "
            "number of seconds > 0, or leave it out for no limit"
        )
    if settings.cpus_per_trial is not None and not settings.cpus_per_trial > 0:
        raise ConfigError(
            f"--cpus-per-trial {settings.cpus_per_trial:g}: give a number > 0 "
            "(a trial with no CPU would never be limited)"
        )
    if settings.address is not None:
        if settings.address not in ("auto", "local") and not _ADDRESS_RE.match(settings.address):
            raise ConfigError(
                f"--address {settings.address!r} is not a Ray address: use auto, "
                "HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT"
            )
        return  # a cluster's resources are known only once connected
    cpus = settings.num_cpus or os.cpu_count() or 1
    need = settings.cpus_needed()
    if need > cpus:
        raise ConfigError(
            f"one trial needs {need:g} CPUs ({settings.workers_per_trial} worker(s) x "
            f"{settings.cpus_per_worker:g}) but the local Ray has {cpus}: lower "
            "--cpus-per-trial or --workers-per-trial, or raise --num-cpus"
        )
    if settings.gpus_per_trial:
        import torch

        have = torch.cuda.device_count()
        if settings.gpus_per_trial * settings.workers_per_trial > have:
            raise ConfigError(
                f"--gpus-per-trial {settings.gpus_per_trial:g} but this machine has "
                f"{have} GPU(s): trials would wait forever; drop the option, or "
                "pass --address of a cluster with GPUs"
            )


def sweep_trial_overrides(settings: SweepSettings) -> dict[str, Any]:
    """The dotted settings every trial of the sweep gets on top of the space's."""
    extra = dict(settings.overrides)
    if settings.smoke_test:
        extra = {**smoke_overrides(), **extra}
    if settings.data_dir:
        extra.update(data_dir_override(settings.data_dir))
    if settings.data_parallel:
        extra["train.num_workers"] = settings.workers_per_trial
    return extra


def first_trial(space: SearchSpace, extra: dict[str, Any]) -> TrialConfig:
    """The config of the space's first trial with the overrides: proof that they fit."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=space.optuna_sampler(), directions=space.directions).ask()
    constants = space.define_by_run(trial) or {}
    return space.resolve({**trial.params, **constants}, extra)


def check_sweep(space: SearchSpace, settings: SweepSettings) -> dict[str, Any]:
    """Settings, the fault hook, overrides against the trial config; returns the per-trial
    overrides. (The data come later, in `check_sweep_data`, once the experiment folder's
    name is known to be free.)"""
    check_settings(settings)
    faults.armed()  # a test hook; a malformed value is refused like any other input
    extra = sweep_trial_overrides(settings)
    first_trial(space, extra)
    return extra


def check_sweep_data(space: SearchSpace, extra: dict[str, Any]) -> list[str]:
    """Every checkpoint a trial may use, and the data of the first trial; the data's notes."""
    cfg = first_trial(space, extra)
    return check_trial(cfg, _checkpoint_names(space, extra, cfg.model.checkpoint))


def _checkpoint_names(space: SearchSpace, extra: dict[str, Any], sampled: str) -> set[str]:
    """Every model.checkpoint a trial of this space can use."""
    if _CHECKPOINT_KEY in extra:
        return {extra[_CHECKPOINT_KEY]}
    names = {sampled}
    if _CHECKPOINT_KEY in space.base:
        names.add(space.base[_CHECKPOINT_KEY])
    for variant in space.variants.values():
        if _CHECKPOINT_KEY in variant:
            names.add(variant[_CHECKPOINT_KEY])
    for param in space.parameters:
        if param.key == _CHECKPOINT_KEY:
            names.update(param.choices or () if param.kind == "categorical" else (param.value,))
    return {name for name in names if isinstance(name, str)}
