"""`hpsearch slurm`: a sweep, or the rest of one, as a SLURM batch job.

    hpsearch slurm search_spaces/default.yaml --data-dir ~/data/cs224n --gpus-per-trial 1 \
        --nodes 2 --cpus-per-node 8 --gpus-per-node 2 --time 24:00:00 --partition gpu --submit
    hpsearch slurm --resume results/default --nodes 2 ... --submit     # after a stop or time-out

writes a batch script (`hpsearch/slurm_template.py`: Ray's head on the first node, workers with
`srun` on the others, the driver with `--address`, Ray stopped cleanly at the end, on a
cancellation and before the time limit) and with --submit submits it with sbatch. The
experiment folder is fixed when the script is written (STORAGE/NAME), so that a later job can
resume it. Before anything is written or submitted, one line and exit 2 for: an option the
job cannot use (--address, --num-cpus, --exist-ok-suffix), a space or sweep options that do
not validate (the sweep's own pre-flight), a trial bigger than a node (GPUs or CPUs), a time
limit shorter than the sweep needs (`hpsearch.slurm_budget`), no sbatch or no Ray token for
--submit, a script that exists with other content.

This module imports nothing heavy: `hpsearch --help` adds its options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hpsearch.settings import SweepSettings
from hpsearch.slurm_budget import (
    JOB_START_S,
    STOP_MARGIN_S,
    Estimate,
    estimate_trial_seconds,
    sweep_estimate,
)
from hpsearch.slurm_template import hpsearch_command, option_flag, sweep_options, write_script
from trainables.errors import ConfigError

__all__ = [
    "JobPlan",
    "SlurmJob",
    "add_job_arguments",
    "parse_time",
    "plan_job",
    "run_slurm",
]

_MIN_WORK_S = 60  # a job shorter than start + stop + this would do nothing useful
_SBATCH_SAFE = re.compile(r"^[A-Za-z0-9._,:+=@%/-]+$")  # what an #SBATCH line carries unquoted


@dataclass(frozen=True)
class SlurmJob:
    """What the batch job asks SLURM for, and what `hpsearch slurm` does with the script.
    Every default of the job options lives here (the CLI reads them)."""

    nodes: int = 1  # one Ray node per SLURM node: the head on the first
    cpus_per_node: int = 4  # --cpus-per-task of the one task per node; Ray's --num-cpus
    gpus_per_node: int = 0  # --gpus-per-node; Ray's --num-gpus
    time: str = "04:00:00"  # SLURM's time limit (MM, HH:MM:SS, D-HH:MM, ...)
    partition: str | None = None
    account: str | None = None
    exclusive: bool = False  # whole nodes, shared with no other job
    job_name: str | None = None  # default: hpsearch-NAME
    script: str | None = None  # default: STORAGE/NAME.slurm.sh (--resume: NAME.resume.slurm.sh)
    multi_job: bool = False  # accept a --time below the estimate: later jobs resume the sweep
    submit: bool = False

    @classmethod
    def default(cls, name: str) -> Any:
        for f in fields(cls):
            if f.name == name:
                return f.default
        raise KeyError(name)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SlurmJob:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def options(self) -> list[str]:
        """The job options that differ from the defaults, as `hpsearch slurm` takes them
        (script and submit aside): what a resume job repeats."""
        given: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("script", "submit") or value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            given += [flag] if value is True else [flag, str(value)]
        return given


@dataclass(frozen=True)
class JobPlan:
    """What the batch script runs, and where its files go."""

    kind: str  # "sweep" or "resume"
    title: str
    exp_dir: Path
    driver: list[list[str]]  # the driver's command, one line of the script per entry
    estimate: Estimate
    script: Path
    log: Path  # SLURM's output file; %j is the job id


def _whole(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the job itself (the sweep's are `hpsearch sweep`'s)."""
    default = SlurmJob.default
    job = parser.add_argument_group("SLURM job")
    job.add_argument(
        "--resume",
        metavar="EXP_DIR",
        help="a job that continues this experiment (`hpsearch resume` on the job's Ray)",
    )
    job.add_argument("--nodes", type=_whole(1), default=default("nodes"), help="SLURM nodes")
    job.add_argument(
        "--cpus-per-node",
        type=_whole(1),
        default=default("cpus_per_node"),
        help=f"CPUs on each node for trials (default {default('cpus_per_node')})",
    )
    job.add_argument(
        "--gpus-per-node", type=_whole(0), default=default("gpus_per_node"), help="GPUs per node"
    )
    job.add_argument(
        "--time",
        default=default("time"),
        help=f"time limit, HH:MM:SS or D-HH:MM:SS (default {default('time')})",
    )
    job.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    job.add_argument("--account", help="SLURM account to charge")
    job.add_argument("--exclusive", action="store_true", help="whole nodes, no other jobs")
    job.add_argument("--job-name", help="default: hpsearch-NAME")
    job.add_argument(
        "--script", help="where to write the batch script (default: beside the experiment)"
    )
    job.add_argument(
        "--multi-job",
        action="store_true",
        help="accept a --time shorter than the estimate: continue with --resume in later jobs",
    )
    job.add_argument("--submit", action="store_true", help="submit the script with sbatch")


def parse_time(text: str) -> float | None:
    """Seconds of a SLURM time limit (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S); None: unlimited."""
    if text.strip().upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(
            f"--time {text!r} is not a SLURM time limit: use HH:MM:SS, D-HH:MM:SS or minutes"
        )
    days, first, second, third = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60.0 + seconds
    if len(parts) == 3:
        return parts[0] * 3600.0 + parts[1] * 60 + parts[2]
    return parts[0] * 60.0 + (parts[1] if len(parts) == 2 else 0)


def duration(seconds: float) -> str:
    """'1 h 05 min', '4 min 10 s', '40 s'."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


# ---------------------------------------------------------------------------- the command
def run_slurm(args: argparse.Namespace, settings: SweepSettings) -> int:
    """`hpsearch slurm`: check, write the script, and with --submit submit it."""
    job = SlurmJob.from_args(args)
    sbatch = _sbatch() if job.submit else None  # before any work: nothing can be submitted
    if job.submit:
        _check_token()
    plan = plan_job(args, settings, job)
    script = write_script(plan, job, parse_time(job.time))
    print(f"SLURM batch script: {script}")
    print(f"experiment folder: {plan.exp_dir}")
    print(f"time needed: at least {duration(plan.estimate.seconds)} ({plan.estimate.how})")
    resume = shlex.join(["hpsearch", "slurm", "--resume", str(plan.exp_dir), *job.options()])
    if sbatch is None:
        print(f"submit it with: sbatch {shlex.quote(str(script))}")
    else:
        job_id = submit(sbatch, script)
        print(f"submitted batch job {job_id}")
        print(f"its output: {str(plan.log).replace('%j', job_id)}")
    print(f"continue it after a stop or the time limit with: {resume} --submit")
    return 0


def plan_job(args: argparse.Namespace, settings: SweepSettings, job: SlurmJob) -> JobPlan:
    """Every check of the job, then what its script runs (nothing is written here)."""
    limit = parse_time(job.time)
    for value, what in (
        (job.job_name, "--job-name"),
        (job.partition, "--partition"),
        (job.account, "--account"),
    ):
        if value is not None and not _SBATCH_SAFE.match(value):
            raise ConfigError(f"{what} {value!r}: use letters, digits and . _ - only")
    plan = _plan_resume(args, settings, job) if args.resume else _plan_sweep(args, settings, job)
    if not _SBATCH_SAFE.match(str(plan.log)):
        raise ConfigError(
            f"the job's output file {plan.log} holds a space or a quote, which an #SBATCH "
            "line cannot carry: pick a --storage-path without"
        )
    _check_time(limit, plan.estimate, job)
    return plan


def _plan_sweep(args: argparse.Namespace, settings: SweepSettings, job: SlurmJob) -> JobPlan:
    from hpsearch import preflight
    from hpsearch.experiment import new_experiment_dir
    from hpsearch.space_parser import load_search_space

    if not args.space:
        raise ConfigError(
            "give a search space (hpsearch slurm SPACE.yaml ...), or --resume EXP_DIR to "
            "continue an experiment"
        )
    for given, flag, why in (
        (settings.address, "--address", "the job starts its own Ray cluster on its nodes"),
        (settings.num_cpus, "--num-cpus", "the job's Ray has --cpus-per-node CPUs a node"),
        (
            settings.exist_ok_suffix,
            "--exist-ok-suffix",
            "the experiment folder is fixed when the script is written, so that a later "
            "job can resume it; pick a free --name",
        ),
    ):
        if given:
            raise ConfigError(f"{flag} does not apply to a SLURM job ({why}): drop {flag}")
    space_overrides = {"search.num_samples": settings.num_samples} if settings.num_samples else {}
    space = load_search_space(args.space, overrides=space_overrides)
    if settings.smoke_test and space.sampler != "grid":  # as run_sweep does
        space = dataclasses.replace(space, num_samples=min(space.num_samples, 2))
    extra = preflight.check_sweep(space, dataclasses.replace(settings, address="auto"))
    at_once = trials_at_once(settings, job, settings.max_concurrent or space.max_concurrent)
    exp_dir = new_experiment_dir(settings, space.name)
    trial_s, how = estimate_trial_seconds(preflight.first_trial(space, extra), settings)
    command = [
        [*hpsearch_command(), "sweep", str(Path(args.space).expanduser().resolve())],
        *([o] for o in args.overrides),
        *sweep_options(settings, exp_dir),
    ]
    return JobPlan(
        kind="sweep",
        title=f"hpsearch sweep of search space {space.name!r} as a SLURM job",
        exp_dir=exp_dir,
        driver=command,
        estimate=sweep_estimate(space.num_samples, trial_s, at_once, how),
        script=_script_path(job, exp_dir, "slurm.sh"),
        log=exp_dir.parent / f"{exp_dir.name}.slurm-%j.out",
    )


def _plan_resume(args: argparse.Namespace, settings: SweepSettings, job: SlurmJob) -> JobPlan:
    from hpsearch import preflight
    from hpsearch.experiment import SPACE_COPY, Experiment
    from hpsearch.space_parser import load_search_space

    if args.space:
        raise ConfigError(
            f"--resume continues an experiment with the space it recorded: drop {args.space}"
        )
    given = _given_sweep_options(settings)
    if given:
        raise ConfigError(
            f"--resume continues the experiment with the settings it recorded: drop "
            f"{', '.join(given)} (only --no-report applies)"
        )
    experiment = Experiment.load(args.resume)
    from ray import tune

    if not tune.Tuner.can_restore(str(experiment.path)):
        raise ConfigError(
            f"{experiment.path}: Ray's experiment state is missing (the sweep stopped before "
            "its first trial started): start a new sweep with another --name, or remove "
            f"{experiment.path} first"
        )
    recorded = experiment.settings
    space = load_search_space(experiment.path / SPACE_COPY)
    at_once = trials_at_once(recorded, job, recorded.max_concurrent or space.max_concurrent)
    records = _trial_records(experiment.trials_dir)
    ended = [
        r
        for r in records
        if r.get("status") != "running" and not str(r.get("reason") or "").startswith("abandoned")
    ]
    spans = [
        float(r["ended_at"]) - float(r["started_at"])
        for r in ended
        if isinstance(r.get("ended_at"), (int, float))
        and isinstance(r.get("started_at"), (int, float))
    ]
    if spans:
        trial_s, how = sum(spans) / len(spans), f"the mean of its {len(spans)} ended trial(s)"
    else:
        cfg = preflight.first_trial(space, experiment.trial_overrides)
        trial_s, how = estimate_trial_seconds(cfg, recorded)
    remaining = max(0, experiment.total_trials - len(ended))
    report = [] if settings.report else [["--no-report"]]
    exp_dir = experiment.path
    return JobPlan(
        kind="resume",
        title=f"hpsearch resume of experiment {exp_dir.name!r} as a SLURM job",
        exp_dir=exp_dir,
        driver=[[*hpsearch_command(), "resume", str(exp_dir)], *report],
        estimate=sweep_estimate(remaining, trial_s, at_once, how),
        script=_script_path(job, exp_dir, "resume.slurm.sh"),
        log=exp_dir.parent / f"{exp_dir.name}.slurm-%j.out",
    )


# ---------------------------------------------------------------------------- checks
def trials_at_once(settings: SweepSettings, job: SlurmJob, max_concurrent: int | None) -> int:
    """How many trials the job's nodes run at once; refuses a trial that fits nowhere."""
    cpus, gpus = settings.cpus_per_worker, settings.gpus_per_trial
    if gpus > job.gpus_per_node:
        raise ConfigError(
            f"--gpus-per-trial {gpus:g} but --gpus-per-node {job.gpus_per_node}: a trial's "
            "worker runs on one node and would wait forever; raise --gpus-per-node or "
            "lower --gpus-per-trial"
        )
    if cpus > job.cpus_per_node:
        raise ConfigError(
            f"--cpus-per-trial {cpus:g} but --cpus-per-node {job.cpus_per_node}: a trial's "
            "worker runs on one node and would wait forever; raise --cpus-per-node or "
            "lower --cpus-per-trial"
        )
    per_node = math.floor(job.cpus_per_node / cpus + 1e-9)
    if gpus > 0:
        per_node = min(per_node, math.floor(job.gpus_per_node / gpus + 1e-9))
    workers = job.nodes * per_node
    at_once = workers // settings.workers_per_trial
    if at_once < 1:
        raise ConfigError(
            f"--workers-per-trial {settings.workers_per_trial} but the job's {job.nodes} "
            f"node(s) hold {workers} such worker(s): raise --nodes or --cpus-per-node "
            "(or --gpus-per-node), or lower --workers-per-trial"
        )
    return min(at_once, max_concurrent) if max_concurrent else at_once


def _check_time(limit: float | None, estimate: Estimate, job: SlurmJob) -> None:
    if limit is None:
        return
    least = JOB_START_S + STOP_MARGIN_S + _MIN_WORK_S
    if limit < least:
        raise ConfigError(
            f"--time {job.time} leaves no time for trials: a job takes about {JOB_START_S} s "
            f"to start Ray and stops {STOP_MARGIN_S} s before its limit; give at least "
            f"{duration(least)}"
        )
    if limit < estimate.seconds and not job.multi_job:
        raise ConfigError(
            f"--time {job.time} ({duration(limit)}) is shorter than this sweep needs: at "
            f"least {duration(estimate.seconds)} ({estimate.how}); raise --time, bound "
            "trials with --time-limit-per-trial, or pass --multi-job to continue in later "
            "jobs (hpsearch slurm --resume)"
        )


def _check_token() -> None:
    """Refuse to submit a job that would find no Ray token (it would fail in the queue)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    token = Path(path).expanduser() if path else Path.home() / ".ray" / "auth_token"
    if not (token.is_file() and token.stat().st_size > 0):
        how = "RAY_AUTH_TOKEN_PATH names a missing or empty file" if path else "no token"
        raise ConfigError(
            f"Ray token {token}: {how}; the job's Ray nodes and driver need one: run `ray "
            "get-auth-token --generate > /dev/null` (writes ~/.ray/auth_token; docs/CLUSTER.md)"
        )


def _given_sweep_options(settings: SweepSettings) -> list[str]:
    """The sweep options given on the command line (what differs from SweepSettings())."""
    default = SweepSettings()
    given = []
    for f in fields(SweepSettings):
        if f.name != "report" and getattr(settings, f.name) != getattr(default, f.name):
            given.append(
                "trial-config overrides" if f.name == "overrides" else option_flag(f.name)
            )
    return given


def _script_path(job: SlurmJob, exp_dir: Path, suffix: str) -> Path:
    if job.script:
        return Path(job.script).expanduser().resolve()
    return exp_dir.parent / f"{exp_dir.name}.{suffix}"


def _trial_records(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a record being written; the driver rewrites it
    return records


# ---------------------------------------------------------------------------- sbatch
def _sbatch() -> str:
    path = shutil.which("sbatch")
    if path is None:
        raise ConfigError(
            "--submit needs SLURM's sbatch, which is not on PATH here: run this on the "
            "cluster's login node, or drop --submit and submit the script with sbatch later"
        )
    return path


def submit(sbatch: str, script: Path) -> str:
    """Submit `script`; its job id. A refusal by sbatch is one line (the script stays)."""
    proc = subprocess.run(
        [sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise ConfigError(
            f"sbatch refused {script}: {lines[-1] if lines else f'exit {proc.returncode}'}"
        )
    return proc.stdout.strip().split(";")[0]
