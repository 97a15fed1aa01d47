"""TensorBoard's HParams view of a sweep, written by the driver: one session per trial.

The trials write their scalars (loss/*, train/lr, pcgrad/*, dev/*) into their run folder's
`tb/` (`trainables.minbert.callbacks.TensorBoardLogger`); the driver adds the HParams session
of each trial to that same TensorBoard run, so that its metrics are read from the trial's own
dev scalars:

    runs/<id>/tb/events.out.tfevents.*            the trial's scalars
    runs/<id>/tb/events.out.tfevents.*.hparams    its session: start, then end

The session starts when the trial starts, with the hyperparameters the space searches
(booleans as booleans, a variant or seed too when the space draws one), and ends when the
trial ends, with the status its trial record got: finished or stopped early by ASHA show as
success, failed as failure; a running trial's session has no end yet (TensorBoard: unknown).
Its metrics are the dev scores only (`HPARAMS_METRICS`), never the train-subset or held-out
test scores. Ray Tune's own TensorBoard logger, which would add a second session per trial
with every reported number, is turned off (`hpsearch.driver.build_tuner`).

    hpsearch tensorboard results/EXPERIMENT     # the HPARAMS tab

Point TensorBoard at one experiment folder for the HParams view: its columns (the searched
hyperparameters) come from one experiment's definition.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from hpsearch.space import SEED_KEY, VARIANT_KEY, is_number
from trainables.errors import ConfigError
from trainables.minbert.callbacks import end_hparams_session, start_hparams_session

if TYPE_CHECKING:
    from hpsearch.experiment import Experiment
    from hpsearch.space import Param, SearchSpace

__all__ = ["HParamsRecorder", "trial_hparams"]


class HParamsRecorder(Callback):
    """Starts each trial's HParams session as the trial starts and ends it as the trial ends.

    Goes after `StatusRecorder` in the tuner's callbacks: a session ends with the status
    that the trial's record (trials/<id>.json) was just given.
    """

    def __init__(self, experiment: Experiment, space: SearchSpace) -> None:
        self.experiment = experiment
        self.space = space

    def _log_dir(self, trial: Any) -> Any:
        return self.experiment.run_dir(trial.trial_id) / "tb"

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        hparams = trial_hparams(self.space, dict(trial.config), self.experiment.trial_overrides)
        start_hparams_session(self._log_dir(trial), hparams, hparam_infos(self.space))

    def on_trial_complete(
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        end_hparams_session(self._log_dir(trial), self._recorded_status(trial))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        end_hparams_session(self._log_dir(trial), "failed")

    def _recorded_status(self, trial: Any) -> str:
        try:
            record = json.loads(self.experiment.record_path(trial.trial_id).read_text())
        except (OSError, ValueError):
            return "failed"
        return str(record.get("status", "failed"))


def trial_hparams(
    space: SearchSpace, config: dict[str, Any], overrides: dict[str, Any] | None = None
) -> dict[str, bool | int | float | str]:
    """What a trial's session shows: the values of the parameters the space searches (the
    active ones), its variant and seed when the space draws them, as the trial ran them.

    Each value has its column's type (`hparam_infos`): a boolean stays a boolean, and a
    choice among mixed kinds of values is shown as text.
    """
    try:
        flat = space.resolve(config, overrides).to_flat_dict()
    except ConfigError:
        flat = dict(config)
    if space.variants:
        flat[VARIANT_KEY] = space.variant_of(config)
    active = {p.key for p in _searched(space) if p.active(config)}
    hparams: dict[str, bool | int | float | str] = {}
    for name, kind in _columns(space):
        value = flat.get(name, config.get(name))
        if name in (VARIANT_KEY, SEED_KEY) or name in active:
            if kind == "string" or not isinstance(value, (bool, int, float, str)):
                hparams[name] = str(value)
            else:
                hparams[name] = value
    return hparams


def hparam_infos(space: SearchSpace) -> list[Any]:
    """The HParams columns of the sweep (api_pb2.HParamInfo), with each parameter's domain."""
    from tensorboard.plugins.hparams import api_pb2

    types = {
        "bool": api_pb2.DATA_TYPE_BOOL,
        "number": api_pb2.DATA_TYPE_FLOAT64,
        "string": api_pb2.DATA_TYPE_STRING,
    }
    params = {p.key: p for p in _searched(space)}
    infos = []
    for name, kind in _columns(space):
        info = api_pb2.HParamInfo(name=name, type=types[kind])
        param = params.get(name)
        if param is not None and param.kind in ("float", "int"):
            if param.low is not None and param.high is not None:
                info.domain_interval.min_value = float(param.low)
                info.domain_interval.max_value = float(param.high)
        else:
            for choice in _choices(space, name):
                value = info.domain_discrete.values.add()
                if kind == "bool":
                    value.bool_value = choice
                elif kind == "number":
                    value.number_value = choice
                else:
                    value.string_value = str(choice)
        infos.append(info)
    return infos


def _searched(space: SearchSpace) -> list[Param]:
    return [p for p in space.parameters if p.kind != "fixed"]


def _choices(space: SearchSpace, name: str) -> list[Any]:
    if name == VARIANT_KEY:
        return list(space.variants)
    if name == SEED_KEY and space.seeds:
        return list(space.seeds)
    param = next(p for p in space.parameters if p.key == name)
    return list(param.choices or ())


def _columns(space: SearchSpace) -> list[tuple[str, str]]:
    """(name, "bool" | "number" | "string") of each column: variant, parameters, seed."""
    names = [VARIANT_KEY] if space.variants else []
    names += [p.key for p in _searched(space) if not (space.seeds and p.key == SEED_KEY)]
    names += [SEED_KEY] if space.seeds else []
    columns = []
    for name in names:
        param = next((p for p in space.parameters if p.key == name), None)
        if param is not None and param.kind in ("float", "int"):
            columns.append((name, "number"))
            continue
        choices = _choices(space, name)
        if choices and all(isinstance(c, bool) for c in choices):
            columns.append((name, "bool"))
        elif choices and all(is_number(c) for c in choices):
            columns.append((name, "number"))
        else:
            columns.append((name, "string"))
    return columns
