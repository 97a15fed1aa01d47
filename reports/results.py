"""Read a sweep's experiment folder into tables, tolerating crashed and partial sweeps.

    from reports.results import load_results
    res = load_results("results/demo")
    res.trials      # one row per trial: status, variant, seed, config/<key>, dev_/train_/test_ metrics
    res.curves      # one row per evaluation (metrics.jsonl), long form
    res.warnings    # what was missing or unreadable, one line each
    res.toggles     # the extension toggles experiment.json recorded (variant names, labels)

The folder layout is the sweep driver's contract (docs/REPORTS.md): `experiment.json`,
`search_space.yaml`, `optuna.journal`, `trials/<trial_id>.json`, and in each trial's folder
`metrics.jsonl` (one evaluation per line) and, once finished, `summary.json`.
Nothing here raises on a damaged trial: it becomes a row (status "corrupt", or NaN metrics)
and a line in `warnings`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # pandas ships no types
import yaml

from reports.errors import ReportError
from reports.table import finished_trials
from reports.variants import Toggle, toggles_from_records, variant_name

SPLITS = ("dev", "train", "test")
TASK_METRICS = ("sst_acc", "para_acc", "sts_r", "overall")
METRICS = tuple(f"{split}_{m}" for split in SPLITS for m in TASK_METRICS)
STATUSES = ("finished", "stopped", "failed", "running", "pending", "corrupt")
CURVE_COLUMNS = (
    "trial_id",
    "variant",
    "status",
    "step",
    "epoch",
    "time_s",
    "phase",
    "dev_sst_acc",
    "dev_para_acc",
    "dev_sts_r",
    "dev_overall",
    "loss_sst",
    "loss_para",
    "loss_sts",
    "pcgrad_conflict_rate",
)
_SUMMARY_EXTRAS = ("train_time_s", "peak_mem_mb", "steps", "epochs")
_BASE_COLUMNS = (
    "trial_id",
    "status",
    "reason",
    "variant",
    "seed",
    "trial_dir",
    *METRICS,
    *_SUMMARY_EXTRAS,
    "elapsed_s",
    "n_evals",
    "last_step",
    "last_epoch",
    "has_summary",
    "bad_metric_lines",
)


@dataclass
class Results:
    """Everything a report is built from; the DataFrames are the only inputs of the tables.

    Attributes:
        exp_dir: the experiment folder.
        trials: one row per trial file (columns in `_BASE_COLUMNS` plus `config/<key>`).
        curves: one row per evaluation of every trial (`CURVE_COLUMNS`).
        experiment: `experiment.json` as a dict ({} when missing).
        searched: dotted keys the search varied (union over trials, in first-seen order).
        warnings: one line per data problem found while reading.
        configs: trial_id -> the flat dotted config exactly as the trial file holds it.
        search_space: `search_space.yaml` parsed with `yaml.safe_load` (None when missing).
        toggles: the extension toggles experiment.json records, in registry order; they name
            and label the variants. Empty when it records none (a warning says so).
    """

    exp_dir: Path
    trials: pd.DataFrame
    curves: pd.DataFrame
    experiment: dict[str, Any]
    searched: list[str]
    warnings: list[str] = field(default_factory=list)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    search_space: dict[str, Any] | None = None
    toggles: tuple[Toggle, ...] = ()

    @property
    def finished(self) -> pd.DataFrame:
        """Rows of trials whose status is "finished"."""
        return finished_trials(self.trials)


def load_results(exp_dir: str | Path) -> Results:
    """Read `exp_dir` (a sweep's experiment folder) into a `Results`.

    Raises:
        ReportError: `exp_dir` is not a folder, or holds neither `trials/` nor `experiment.json`.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise ReportError(
            f"experiment folder {exp_dir} does not exist: pass the folder a sweep wrote "
            "(it holds experiment.json and trials/)"
        )
    trials_dir = exp_dir / "trials"
    if not trials_dir.is_dir() and not (exp_dir / "experiment.json").is_file():
        raise ReportError(
            f"{exp_dir} is not an experiment folder (no trials/ and no experiment.json): "
            "pass the folder named after the sweep, e.g. results/<name>"
        )
    warnings: list[str] = []
    recorded = _read_experiment(exp_dir / "experiment.json", warnings)
    experiment = recorded if recorded is not None else {}
    toggles = _read_toggles(recorded, warnings) if recorded is not None else ()
    search_space = _read_search_space(exp_dir / "search_space.yaml", warnings)

    rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    searched: list[str] = []
    trial_files = sorted(trials_dir.glob("*.json")) if trials_dir.is_dir() else []
    if not trial_files:
        warnings.append(f"{trials_dir} holds no trial files: the sweep has not started a trial")
    for path in trial_files:
        record = _read_trial_file(path, warnings)
        if record is None:
            rows.append(_corrupt_row(path, warnings[-1]))
            continue
        row, curve, config = _trial_row(record, exp_dir, toggles, warnings)
        if row["trial_id"] in configs:
            warnings.append(
                f"{path.name}: trial_id {row['trial_id']} appears twice; kept both rows"
            )
        configs[row["trial_id"]] = config
        for key in record.get("searched") or []:
            if isinstance(key, str) and key not in searched:
                searched.append(key)
        rows.append(row)
        curve_rows.extend(curve)

    config_keys = sorted({key for cfg in configs.values() for key in cfg})
    trials = pd.DataFrame(rows, columns=[*_BASE_COLUMNS, *(f"config/{k}" for k in config_keys)])
    for col in (*METRICS, *_SUMMARY_EXTRAS, "elapsed_s", "last_step", "last_epoch"):
        trials[col] = pd.to_numeric(trials[col], errors="coerce").astype(float)
    trials["n_evals"] = trials["n_evals"].fillna(0).astype(int)
    trials["bad_metric_lines"] = trials["bad_metric_lines"].fillna(0).astype(int)
    curves = pd.DataFrame(curve_rows, columns=list(CURVE_COLUMNS))
    for col in CURVE_COLUMNS[3:]:
        if col != "phase":
            curves[col] = pd.to_numeric(curves[col], errors="coerce").astype(float)
    return Results(
        exp_dir=exp_dir,
        trials=trials,
        curves=curves,
        experiment=experiment,
        searched=searched,
        warnings=warnings,
        configs=configs,
        search_space=search_space,
        toggles=toggles,
    )


def cs224n_overall(sst_acc: float, para_acc: float, sts_r: float) -> float:
    """The CS224N multitask score: mean of the two accuracies and the correlation mapped to 0-1."""
    return (sst_acc + para_acc + (sts_r + 1.0) / 2.0) / 3.0


# ---------------------------------------------------------------------------- file readers


def _read_experiment(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    """experiment.json as a dict; None (and a warning) when it is missing or unreadable."""
    if not path.is_file():
        warnings.append(f"{path.name} is missing: experiment name, metric and budget unknown")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        warnings.append(f"{path.name} is unreadable ({_one_line(exc)}): ignored")
        return None
    if not isinstance(data, dict):
        warnings.append(f"{path.name} is not a JSON object: ignored")
        return None
    return data


def _read_toggles(experiment: dict[str, Any], warnings: list[str]) -> tuple[Toggle, ...]:
    """The toggles experiment.json records; none (and a warning) when it records no list."""
    if "toggles" not in experiment:
        warnings.append(
            "experiment.json records no extension toggles (written before sweeps recorded "
            "them): toggles unknown, variants are shown by name"
        )
        return ()
    toggles = toggles_from_records(experiment["toggles"])
    if toggles is None:
        warnings.append(
            "experiment.json: its toggles list is malformed (each entry needs key, name, "
            "short and label strings): toggles unknown, variants are shown by name"
        )
        return ()
    return toggles


def _read_search_space(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        warnings.append(f"{path.name} is unreadable ({_one_line(exc)}): log scales guessed")
        return None
    return data if isinstance(data, dict) else None


def _read_trial_file(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        warnings.append(f"trials/{path.name} is corrupt ({_one_line(exc)}): listed as 'corrupt'")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("trial_id"), str):
        warnings.append(f"trials/{path.name} has no trial_id string: listed as 'corrupt'")
        return None
    if not isinstance(data.get("config"), dict):
        data["config"] = {}
        warnings.append(f"trials/{path.name} has no config mapping: its config columns are empty")
    return data


def _corrupt_row(path: Path, reason: str) -> dict[str, Any]:
    return {
        "trial_id": path.stem,
        "status": "corrupt",
        "reason": reason,
        "variant": None,
        "seed": np.nan,
        "trial_dir": None,
        "n_evals": 0,
        "bad_metric_lines": 0,
        "has_summary": False,
    }


def _trial_row(
    record: dict[str, Any], exp_dir: Path, toggles: tuple[Toggle, ...], warnings: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    trial_id = record["trial_id"]
    config: dict[str, Any] = dict(record["config"])
    status = record.get("status")
    if status not in STATUSES:
        warnings.append(f"trial {trial_id}: unknown status {status!r}, listed as 'pending'")
        status = "pending"
    variant = record.get("variant")
    if not isinstance(variant, str) or not variant:
        variant = variant_name(config, toggles)
    trial_dir = _resolve_trial_dir(record.get("trial_dir"), exp_dir)
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "status": status,
        "reason": record.get("reason"),
        "variant": variant,
        "seed": config.get("train.seed", np.nan),
        "trial_dir": str(trial_dir) if trial_dir else None,
        "has_summary": False,
    }
    row.update({f"config/{k}": v for k, v in config.items()})

    records, bad_lines = _read_metrics(trial_dir, trial_id, status, warnings)
    summary = _read_summary(trial_dir, trial_id, status, warnings)
    row["n_evals"] = len(records)
    row["bad_metric_lines"] = bad_lines
    last = records[-1] if records else {}
    row["last_step"] = _num(last.get("step"))
    row["last_epoch"] = _num(last.get("epoch"))
    # A summary of a failed run ({"status": "failed", "reason": ...}) carries no scores: the
    # latest evaluation's dev metrics stand in for whatever the summary lacks.
    summary = summary or {}
    row["has_summary"] = summary.get("status", "finished") == "finished" and bool(summary)
    for col in METRICS:
        value = _num(summary.get(col))
        if not math.isfinite(value) and col.startswith("dev_"):
            value = _num(last.get(col))
        row[col] = value
    for col in _SUMMARY_EXTRAS:
        row[col] = _num(summary.get(col))
    row["elapsed_s"] = (
        row.get("train_time_s") if _finite(row.get("train_time_s")) else _num(last.get("time_s"))
    )
    for split in SPLITS:
        _fill_overall(row, split, trial_id, warnings)

    curve = [
        {
            "trial_id": trial_id,
            "variant": variant,
            "status": status,
            **{c: r.get(c) for c in CURVE_COLUMNS[3:]},
        }
        for r in records
    ]
    return row, curve, config


def _resolve_trial_dir(raw: Any, exp_dir: Path) -> Path | None:
    if not isinstance(raw, str) or not raw:
        return None
    path = Path(raw)
    if not path.is_absolute():
        return exp_dir / path
    if not path.exists() and (exp_dir / path.name).exists():
        return exp_dir / path.name  # the experiment folder was moved after the sweep
    return path


def _read_metrics(
    trial_dir: Path | None, trial_id: str, status: str, warnings: list[str]
) -> tuple[list[dict[str, Any]], int]:
    if trial_dir is None:
        if status not in ("pending", "failed"):
            warnings.append(f"trial {trial_id} ({status}) has no trial_dir: no metrics")
        return [], 0
    path = trial_dir / "metrics.jsonl"
    if not path.is_file():
        if status != "pending":
            warnings.append(f"trial {trial_id}: {path} is missing: no learning curve")
        return [], 0
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad == [len(lines)]:
        warnings.append(f"trial {trial_id}: metrics.jsonl ends in a truncated line, ignored")
    elif bad:
        warnings.append(
            f"trial {trial_id}: {len(bad)} unreadable metrics.jsonl line(s) ignored "
            f"(line {', '.join(map(str, bad[:5]))})"
        )
    records.sort(key=lambda r: (_num(r.get("step")), _num(r.get("time_s"))))
    return records, len(bad)


def _read_summary(
    trial_dir: Path | None, trial_id: str, status: str, warnings: list[str]
) -> dict[str, Any] | None:
    if trial_dir is None:
        return None
    path = trial_dir / "summary.json"
    if not path.is_file():
        if status == "finished":
            warnings.append(
                f"trial {trial_id} is finished but has no summary.json: latest dev metrics "
                "from metrics.jsonl, train/test metrics unknown"
            )
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        warnings.append(f"trial {trial_id}: summary.json is corrupt ({_one_line(exc)}): ignored")
        return None
    return data if isinstance(data, dict) else None


def _fill_overall(row: dict[str, Any], split: str, trial_id: str, warnings: list[str]) -> None:
    parts = [row.get(f"{split}_{m}") for m in ("sst_acc", "para_acc", "sts_r")]
    if not all(_finite(p) for p in parts):
        return
    expected = cs224n_overall(*parts)  # type: ignore[arg-type]
    recorded = row.get(f"{split}_overall")
    if not _finite(recorded):
        row[f"{split}_overall"] = expected
        warnings.append(f"trial {trial_id}: {split}_overall missing, computed from its parts")
    elif abs(recorded - expected) > 1e-4:  # type: ignore[operator]
        warnings.append(
            f"trial {trial_id}: recorded {split}_overall {recorded:.4f} differs from "
            f"(sst + para + (sts_r + 1) / 2) / 3 = {expected:.4f}; the recorded value is used"
        )


def _num(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
