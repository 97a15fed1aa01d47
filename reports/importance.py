"""Hyperparameter importances from the sweep's Optuna study (fANOVA).

    from reports.importance import importance_table
    table = importance_table(exp_dir, experiment)   # a reports.table.Table, possibly with
                                                    # only a note saying why it is empty

Only COMPLETE trials (trained to their end, with their final score) are ranked: a PRUNED trial
(stopped early by ASHA) holds a partial score and a FAIL one none; the table's note says how
many of each were left out. The study is read from `EXP_DIR/optuna.journal` (Optuna's JournalStorage with a
JournalFileBackend) through a private copy of the file, so a sweep that is still writing is
never locked or touched. Optuna 5 defaults `get_param_importances` to PED-ANOVA; the report
asks for fANOVA (`FanovaImportanceEvaluator`, seeded) explicitly.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd  # pandas ships no types

from reports.search_tables import objectives
from reports.table import Table

JOURNAL = "optuna.journal"


def load_study(exp_dir: Path, experiment: dict[str, Any]) -> tuple[Any | None, str]:
    """(optuna.Study or None, a note saying why not) for the experiment's journal."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(exp_dir) / JOURNAL
    if not path.is_file():
        return None, f"no {JOURNAL} in the experiment folder: importances need the Optuna study"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="report-journal-"))
    try:
        copy = tmp / JOURNAL
        shutil.copyfile(path, copy)
        _drop_partial_last_line(copy)
        storage = JournalStorage(JournalFileBackend(str(copy)))
        names = [s.study_name for s in storage.get_all_studies()]
        wanted = experiment.get("study_name")
        if isinstance(wanted, str) and wanted in names:
            name = wanted
        elif len(names) == 1:
            name = names[0]
        else:
            return None, (
                f"{JOURNAL} holds studies {names or 'none'} and experiment.json names "
                f"{wanted!r}: cannot tell which to read"
            )
        loaded = optuna.load_study(study_name=name, storage=storage)
        # An in-memory copy: the temporary journal is gone once this returns.
        study = optuna.create_study(study_name=name, directions=loaded.directions)
        study.add_trials(loaded.get_trials(deepcopy=True))
        return study, ""
    except Exception as exc:  # a damaged journal must not stop the report
        return None, f"{JOURNAL} could not be read ({type(exc).__name__}: {exc})"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def param_importances(
    study: Any, names: Sequence[str] = (), seed: int = 0
) -> tuple[pd.DataFrame, str]:
    """fANOVA importances per objective: (DataFrame param x objective, note when empty).

    Args:
        study: an optuna.Study.
        names: objective names for the columns (defaults to objective_0, ...).
        seed: seed of the fANOVA random forest.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(done) < 2:
        return pd.DataFrame(), (
            f"only {len(done)} completed trial(s) in the Optuna study{_left_out(study)}: "
            "importances need at least 2"
        )
    common = set.intersection(*(set(t.params) for t in done))
    varied = sorted(p for p in common if len({repr(t.params[p]) for t in done}) > 1)
    if len(varied) < 2:
        what = f"a single searched parameter ({varied[0]})" if varied else "no parameter varied"
        return pd.DataFrame(), f"{what} across completed trials: nothing to rank"
    n_obj = len(study.directions)
    names = list(names)[:n_obj] + [f"objective_{i}" for i in range(len(names), n_obj)]
    columns: dict[str, dict[str, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for i, name in enumerate(names):
            target = None if n_obj == 1 else (lambda t, i=i: t.values[i])
            columns[name] = get_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=seed), params=varied, target=target
            )
    frame = pd.DataFrame(columns).reindex(varied)
    frame = frame.sort_values(names[0], ascending=False)
    frame.index.name = "parameter"
    return frame, ""


def importance_table(exp_dir: Path, experiment: dict[str, Any], seed: int = 0) -> Table:
    """The importance table for a report; empty with a note when there is nothing to rank."""
    objs = objectives(experiment)
    study, note = load_study(exp_dir, experiment)
    frame = pd.DataFrame()
    if study is not None:
        try:
            frame, note = param_importances(study, [m for m, _ in objs], seed=seed)
        except Exception as exc:  # fANOVA on odd studies must not stop the report
            frame, note = pd.DataFrame(), f"fANOVA failed ({type(exc).__name__}: {exc})"
    notes = []
    if frame.empty:
        notes.append(f"Importances skipped: {note}.")
        display = pd.DataFrame()
        data = pd.DataFrame(columns=["parameter"])
    else:
        n_done = _count(study, "COMPLETE")
        notes.append(
            f"fANOVA (optuna FanovaImportanceEvaluator, seed {seed}) over the {n_done} completed "
            f"trials of the Optuna study{_left_out(study)}, normalised to sum to 1 per "
            "objective; with few trials these are rough."
        )
        data = frame.reset_index()
        display = frame.map(lambda v: f"{v:.3f}")
    return Table(
        name="param_importance",
        title="Hyperparameter importance (fANOVA)",
        data=data,
        display=display,
        notes=notes,
    )


def _count(study: Any, state: str) -> int:
    return sum(t.state.name == state for t in study.get_trials(deepcopy=False))


def _left_out(study: Any) -> str:
    """ " (left out: 2 pruned trials, stopped early with partial scores; 1 failed trial)"."""
    pruned, failed = _count(study, "PRUNED"), _count(study, "FAIL")
    parts = []
    if pruned:
        parts.append(f"{_trials(pruned, 'pruned')}, stopped early with partial scores")
    if failed:
        parts.append(_trials(failed, "failed"))
    return f" (left out: {'; '.join(parts)})" if parts else " (none pruned or failed)"


def _trials(n: int, what: str) -> str:
    return f"{n} {what} trial{'' if n == 1 else 's'}"


def _drop_partial_last_line(path: Path) -> None:
    """A sweep killed mid-write leaves a last line without newline; Optuna refuses it."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
