"""A checkable copy of an experiment's results: what docs/examples/ commits.

    hpsearch export results/paper_ablation_tuned docs/examples/paper_ablation_tuned
    hpsearch export runs/all-ext-2 docs/examples/all_extensions          # one `hpsearch train` run

For a sweep's experiment folder the copy holds its report (when one was built), `results.csv`
(one row per trial: status, variant, seed, every config key, every score and time) and, for
each finished trial, the small files anyone needs to check it: `config.json`,
`summary.json`, `metrics.jsonl`, `data_report.json` and the CS224N submission files under
`predictions/` (files over `GZIP_OVER` bytes are gzipped), and its Optuna study
(`optuna.journal`: the copy re-opens with `optuna.load_study` and is a source for
`hpsearch sweep --warm-start`). A tuned ablation exports the report
of the whole plan and each phase as such an experiment under `phases/<phase>/`; by default
the tuning phases carry their result tables and their own reports (the search: each toggle's
effect, parameter importance) but not their trials' files (`--phases` names the phases whose
trials are copied); the final and reference phases are in the plan's report. A run folder
(`summary.json` at its top) exports as one trial.
Checkpoints, TensorBoard events and Ray's own files are never copied.

The destination must not exist or be empty: an export never overwrites files. It is written
in a staging folder beside the destination and moved into place at the end, so a failed
export leaves nothing that looks whole.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from reports.errors import ReportError
from reports.results import load_results

__all__ = ["GZIP_OVER", "TRIAL_FILES", "export_results"]

TRIAL_FILES = ("config.json", "summary.json", "metrics.jsonl", "data_report.json")
GZIP_OVER = 1_000_000  # bytes: larger trial files are stored gzipped (a Quora dev file: ~0.5 MB)
_PHASES = "phases"
_PLAN = "ablation.json"
_DEFAULT_TRIAL_PHASES = ("final", "reference")
# The experiment's Optuna study (hpsearch.experiment.JOURNAL; reports reads result files and
# imports nothing of hpsearch): every trial's parameters, state, values and intermediate
# values, so that the copy re-opens with optuna.load_study and can warm-start a later search.
_JOURNAL = "optuna.journal"


def export_results(
    source: str | Path, dest: str | Path, phases: Sequence[str] | None = None
) -> list[Path]:
    """Copy `source`'s checkable results to `dest`; returns the files written (under `dest`).

    Args:
        source: an experiment folder (a sweep's or a tuned ablation's) or a run folder.
        dest: a folder that does not exist yet (or is empty).
        phases: for a tuned ablation, the phases whose finished trials are copied file by file
            (default: final and reference); every phase's results.csv is written regardless.

    Raises:
        ReportError: `source` is not an experiment or run folder, `dest` exists and is not
            empty, or a named phase does not exist.
    """
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise ReportError(f"{source} is not a folder: pass an experiment or run folder")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ReportError(f"{dest} exists and is not empty: export to a new folder")
    if dest.resolve().is_relative_to(source.resolve()):
        raise ReportError(f"{dest} is inside {source}: export to a folder outside it")
    staging = dest.with_name(f".{dest.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _export_any(source, staging, phases)
        written = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
        if dest.exists():
            dest.rmdir()  # empty, checked above
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [dest / p for p in written]


def _export_any(source: Path, out: Path, phases: Sequence[str] | None) -> None:
    if (source / _PLAN).is_file():
        _export_tuned(source, out, phases)
    elif (source / "trials").is_dir() or (source / "experiment.json").is_file():
        _export_experiment(source, out, copy_trials=True)
    elif (source / "summary.json").is_file():
        _copy_trial_files(source, out)
        _copy_if_present(source / "report", out / "report")
    else:
        raise ReportError(
            f"{source} is neither an experiment folder (trials/, experiment.json) nor a run "
            "folder (summary.json): pass what `hpsearch sweep` or `hpsearch train` wrote"
        )


def _export_tuned(source: Path, out: Path, phases: Sequence[str] | None) -> None:
    present = sorted(p.name for p in (source / _PHASES).iterdir() if p.is_dir())
    unknown = [p for p in phases or () if p not in present]
    if unknown:
        raise ReportError(
            f"{source}: no phase {', '.join(unknown)}; its phases: {', '.join(present)}"
        )
    wanted = _DEFAULT_TRIAL_PHASES if phases is None else tuple(phases)
    shutil.copy2(source / _PLAN, out / _PLAN)
    if (source / "search_space.yaml").is_file():
        shutil.copy2(source / "search_space.yaml", out / "search_space.yaml")
    _copy_if_present(source / "report", out / "report")
    for phase in present:
        _export_experiment(
            source / _PHASES / phase,
            out / _PHASES / phase,
            copy_trials=phase in wanted,
            copy_report=phase not in _DEFAULT_TRIAL_PHASES,  # a tuning phase: its search
        )


def _export_experiment(
    source: Path, out: Path, *, copy_trials: bool, copy_report: bool = True
) -> None:
    results = load_results(source)
    out.mkdir(parents=True, exist_ok=True)
    table = results.trials.drop(columns=["trial_dir"])
    table.to_csv(out / "results.csv", index=False)
    for name in ("experiment.json", "search_space.yaml", "sweep_timing.json", _JOURNAL):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    if copy_report:
        _copy_if_present(source / "report", out / "report")
    if not copy_trials:
        return
    for row in results.finished.itertuples():
        trial_dir = row.trial_dir
        if isinstance(trial_dir, str) and Path(trial_dir).is_dir():
            _copy_trial_files(Path(trial_dir), out / "trials" / str(row.trial_id))


def _copy_trial_files(run: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in TRIAL_FILES:
        if (run / name).is_file():
            _copy_small(run / name, out / name)
    predictions = run / "predictions"
    if predictions.is_dir():
        for path in sorted(predictions.glob("*.csv")):
            _copy_small(path, out / "predictions" / path.name)


def _copy_small(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.stat().st_size > GZIP_OVER:
        with (
            open(src, "rb") as fin,
            gzip.GzipFile(dst.with_name(dst.name + ".gz"), "wb", mtime=0) as fout,
        ):
            shutil.copyfileobj(fin, fout)
    else:
        shutil.copy2(src, dst)


def _copy_if_present(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
