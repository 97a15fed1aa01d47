"""The experiment folder, typed: what experiment.json holds, the folder's layout, the Optuna
study storage, and closing what a killed driver left open.

The experiment folder, `STORAGE/NAME/`:
    experiment.json        what was asked (space, settings, overrides, trial count, command,
                           the extension toggles)
    search_space.yaml      a copy of the space, so that resume and reports need nothing else
    optuna.journal         the Optuna study (optuna.load_study / optuna-dashboard open it)
    trials/<id>.json       each trial's status, reason, variant and resolved configuration
    runs/<id>/             each trial's run folder (metrics.jsonl, summary.json, tb/, ...)
    train_runs/<id>/       Ray Train's own folder of a data-parallel trial
    sweep_timing.json      when each fit (the first run, each resume) started and ended
    <ray trial folders>    Ray's own results and the checkpoints trials resume from
    report/                the ablation report (`hpsearch report EXP_DIR`)
On a multi-node cluster, STORAGE must be a file system every node sees (NFS, EFS).

A tuned plan (a space with a `tuning:` section, hpsearch.ablation) is a folder of such
experiments: `ablation.json` (the plan) beside `phases/<phase>/`, one experiment per phase.
Its layout's names live here, with the experiment's, so that a plan folder is understood
wherever an experiment folder is expected (`warm_start_folder`).

`Experiment` is created once by the driver (`Experiment.create`), loaded by `hpsearch resume`
(`Experiment.load`) and handed to the Ray workers as it is, never re-read there.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.settings import SweepSettings
from trainables.atomic import write_json_atomic, write_text_atomic
from trainables.errors import ConfigError
from trainables.minbert.extensions.registry import toggle_records

if TYPE_CHECKING:
    import optuna

    from hpsearch.space import SearchSpace

__all__ = [
    "ABANDONED",
    "ABLATION_FILE",
    "EXPERIMENT_FILE",
    "JOURNAL",
    "PHASES_DIR",
    "SPACE_COPY",
    "Experiment",
    "check_storage_path",
    "journal_storage",
    "new_experiment_dir",
    "read_plan",
    "reconcile_after_fit",
    "trial_status_counts",
    "warm_start_folder",
]

EXPERIMENT_FILE = "experiment.json"
SPACE_COPY = "search_space.yaml"
JOURNAL = "optuna.journal"
TRIALS = "trials"
RUNS = "runs"
TRAIN_RUNS = "train_runs"
TIMING = "sweep_timing.json"
ABLATION_FILE = "ablation.json"  # a tuned plan's record (hpsearch.ablation)
PHASES_DIR = "phases"  # a tuned plan's phases, one experiment folder each

ABANDONED = (
    "abandoned: the sweep driver stopped while this trial was starting or running, "
    "before Ray saved its state; the resumed sweep ran a new trial in its place"
)


def journal_storage(journal: Path) -> optuna.storages.JournalStorage:
    """The Optuna storage of an experiment's journal file (the one constructor of it)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(journal)))


@dataclass
class Experiment:
    """What experiment.json holds, plus where the folder is.

    Attributes (the file's keys, in its order):
        name, study_name: the folder's name, also the Optuna study's.
        space: the space file the sweep was started from (a copy is in the folder).
        metric, mode, objectives: what the sweep optimises.
        total_trials: trials the sweep runs.
        trial_overrides: dotted settings applied to every trial (smoke test, --data-dir, ...).
        settings: how the sweep runs.
        data_notes: what the pre-flight data check noted (rows skipped, ...).
        created, command: when and how the sweep was started.
        toggles: the extension registry's records, so that reports label variants from the
            results rather than from code.
    """

    path: Path
    name: str
    study_name: str
    space: str
    metric: str | list[str]
    mode: str | list[str]
    objectives: list[dict[str, Any]]
    total_trials: int
    trial_overrides: dict[str, Any]
    settings: SweepSettings
    data_notes: list[str] = field(default_factory=list)
    created: str = ""
    command: str = ""
    toggles: list[dict[str, str]] = field(default_factory=list)

    # -- the layout ---------------------------------------------------------------------------
    @property
    def journal(self) -> Path:
        return self.path / JOURNAL

    @property
    def trials_dir(self) -> Path:
        return self.path / TRIALS

    @property
    def train_runs_dir(self) -> Path:
        return self.path / TRAIN_RUNS

    def run_dir(self, trial_id: str) -> Path:
        """The trial's run folder (the trainer's out_dir)."""
        return self.path / RUNS / trial_id

    def record_path(self, trial_id: str) -> Path:
        """The trial's status record, trials/<id>.json."""
        return self.trials_dir / f"{trial_id}.json"

    # -- creating, saving, loading ------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: Path,
        space_file: Path,
        space: SearchSpace,
        settings: SweepSettings,
        trial_overrides: dict[str, Any],
        data_notes: list[str],
    ) -> Experiment:
        """Make the folder (refusing one that appeared meanwhile), copy the space, save."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the storage path changed since new_experiment_dir checked it
            raise ConfigError(
                f"--storage-path {path.parent} cannot be created ({exc.strerror}): "
                "pass a folder you can write to"
            ) from None
        try:
            path.mkdir()
        except FileExistsError:  # another sweep took the name since new_experiment_dir looked
            raise ConfigError(
                f"experiment folder {path} was just created by someone else: pass another --name"
            ) from None
        write_text_atomic(path / SPACE_COPY, space_file.read_text())
        experiment = cls(
            path=path,
            name=path.name,
            study_name=path.name,
            space=str(space_file.resolve()),
            metric=space.metric,
            mode=space.mode,
            objectives=[asdict(o) for o in space.objectives],
            total_trials=space.num_samples,
            trial_overrides=trial_overrides,
            settings=settings,
            data_notes=data_notes,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            command=" ".join(shlex.quote(a) for a in sys.argv),
            toggles=toggle_records(),
        )
        experiment.save()
        return experiment

    def to_json(self) -> dict[str, Any]:
        """experiment.json's content."""
        return {
            "name": self.name,
            "study_name": self.study_name,
            "space": self.space,
            "metric": self.metric,
            "mode": self.mode,
            "objectives": self.objectives,
            "total_trials": self.total_trials,
            "trial_overrides": self.trial_overrides,
            "settings": self.settings.to_dict(),
            "data_notes": self.data_notes,
            "created": self.created,
            "command": self.command,
            "toggles": self.toggles,
        }

    def save(self) -> None:
        write_json_atomic(self.path / EXPERIMENT_FILE, self.to_json())

    @classmethod
    def load(cls, folder: str | Path) -> Experiment:
        """The experiment a sweep wrote in `folder`; ConfigError if it is not one."""
        path = Path(folder).expanduser().resolve()
        if not (path / EXPERIMENT_FILE).is_file():
            raise ConfigError(
                f"{path} is not an hpsearch experiment folder (no {EXPERIMENT_FILE}): "
                "pass the folder a sweep wrote"
            )
        try:
            recorded = json.loads((path / EXPERIMENT_FILE).read_text())
            return cls(
                path=path,
                name=str(recorded.get("name", path.name)),
                study_name=str(recorded["study_name"]),
                space=str(recorded.get("space", "")),
                metric=recorded.get("metric", "dev_overall"),
                mode=recorded.get("mode", "max"),
                objectives=list(recorded.get("objectives", [])),
                total_trials=int(recorded["total_trials"]),
                trial_overrides=dict(recorded["trial_overrides"]),
                settings=SweepSettings.from_dict(recorded["settings"]),
                data_notes=list(recorded.get("data_notes", [])),
                created=str(recorded.get("created", "")),
                command=str(recorded.get("command", "")),
                toggles=list(recorded.get("toggles", [])),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"{path / EXPERIMENT_FILE} is unreadable or incomplete: the experiment "
                "cannot be resumed; start a new sweep with another --name"
            ) from None

    # -- the study and the end of a fit -------------------------------------------------------
    def storage(self) -> optuna.storages.JournalStorage:
        """The experiment's Optuna study storage."""
        return journal_storage(self.journal)

    def record_fit(self, started_at: float, ended_at: float) -> None:
        """Append one fit's wall-clock span to sweep_timing.json (the first run, each resume)."""
        timing_path = self.path / TIMING
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else []
        write_json_atomic(timing_path, [*timing, {"started_at": started_at, "ended_at": ended_at}])

    def reconcile(self, known: set[str]) -> list[str]:
        """See `reconcile_after_fit`."""
        return reconcile_after_fit(self.path, known)

    def status_counts(self) -> dict[str, int]:
        """See `trial_status_counts`."""
        return trial_status_counts(self.path)


def new_experiment_dir(settings: SweepSettings, space_name: str) -> Path:
    """STORAGE/NAME for a new sweep; refuses an existing one unless --exist-ok-suffix."""
    name = settings.name or space_name
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"experiment name {name!r} is not a plain folder name: pass --name NAME")
    root = Path(settings.storage_path).expanduser().resolve()
    check_storage_path(root)
    path = root / name
    if path.exists():
        if not settings.exist_ok_suffix:
            raise ConfigError(
                f"experiment folder {path} already exists: pass another --name, "
                f"or `hpsearch resume {path}` to continue it"
            )
        suffix = 2
        while (root / f"{name}-{suffix}").exists():
            suffix += 1
        path = root / f"{name}-{suffix}"
        print(
            f"experiment folder {root / name} exists: writing to {path} instead", file=sys.stderr
        )
    return path


def check_storage_path(root: Path) -> None:
    """Refuse a --storage-path that is a file, lies under a file, or cannot be created or
    written to; creates nothing (the sweep makes the folder only once every check passed)."""
    flag = f"--storage-path {root}"
    if _exists(root) and not root.is_dir():
        raise ConfigError(f"{flag} is a file, not a folder: pass a folder for the experiments")
    existing = root
    while not _exists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{flag} cannot be created: {existing} is a file, not a folder; "
            "pass a path under a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == root else f"cannot be created in {existing}"
        raise ConfigError(f"{flag} {what} (permission denied): pass a folder you can write to")


def _exists(path: Path) -> bool:
    """Whether `path` exists; False where it cannot be looked at (a parent not searchable)."""
    try:
        return path.exists()
    except OSError:
        return False


def reconcile_after_fit(folder: Path, known: set[str]) -> list[str]:
    """Close what a killed driver left open, once the sweep has ended; returns the trial ids.

    Ray saves its experiment state every few seconds, so a driver killed just after a trial
    started can leave a trial Ray never heard of: its record says "running" and its Optuna
    trial stays RUNNING, though the resumed sweep ran a new trial in its place. Such records
    become "failed" with the reason ABANDONED (their TensorBoard HParams session ends as a
    failure), and RUNNING Optuna trials become FAIL.
    """
    abandoned = []
    for path in sorted((folder / TRIALS).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("status") in ("running", "pending") and record.get("trial_id") not in known:
            record.update(status="failed", reason=ABANDONED)
            write_json_atomic(path, record)
            abandoned.append(str(record["trial_id"]))
            tb = folder / str(record.get("trial_dir", f"runs/{record['trial_id']}")) / "tb"
            if tb.is_dir():  # its TensorBoard HParams session ends too, as failed
                from trainables.minbert.callbacks import end_hparams_session

                end_hparams_session(tb, "failed")
    journal = folder / JOURNAL
    experiment_file = folder / EXPERIMENT_FILE
    if journal.is_file() and experiment_file.is_file():
        import optuna

        study_name = json.loads(experiment_file.read_text())["study_name"]
        study = optuna.load_study(study_name=study_name, storage=journal_storage(journal))
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return abandoned


def trial_status_counts(folder: Path) -> dict[str, int]:
    """{status: number of trials} from trials/*.json; an unreadable record counts as corrupt."""
    statuses = []
    for path in sorted((folder / TRIALS).glob("*.json")):
        try:
            statuses.append(str(json.loads(path.read_text())["status"]))
        except (OSError, ValueError, KeyError, TypeError):
            statuses.append("corrupt")
    return {status: statuses.count(status) for status in sorted(set(statuses))}


def read_plan(folder: Path) -> dict[str, Any]:
    """A tuned plan's record, FOLDER/ablation.json (hpsearch.ablation writes it)."""
    path = folder / ABLATION_FILE
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}): not a tuned ablation folder") from None
    return record


def warm_start_folder(source: str | Path) -> Path:
    """The experiment folder `--warm-start SOURCE` means: SOURCE itself, or for a tuned
    plan's folder its one tuning phase (the search; its final runs are a grid of the best).
    ConfigError for a plan of several variants: which variant's search is meant is the
    user's choice, and the error lists the phase folders to choose from."""
    folder = Path(source).expanduser()
    if not (folder / ABLATION_FILE).is_file():
        return folder
    try:
        record = read_plan(folder)
    except ConfigError as exc:
        raise ConfigError(
            f"--warm-start {folder}: {exc}; pass one of its {PHASES_DIR}/tune-<variant> "
            "folders instead"
        ) from None
    phases = [p for p in record.get("phases", []) if str(p).startswith("tune-")]
    if len(phases) != 1:
        listed = ", ".join(str(folder / PHASES_DIR / p) for p in phases)
        raise ConfigError(
            f"--warm-start {folder}: a tuned ablation of {len(phases)} variants; pass the "
            f"tuning phase to start from: one of {listed}"
        )
    return folder / PHASES_DIR / str(phases[0])
