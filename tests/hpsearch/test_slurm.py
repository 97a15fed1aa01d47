"""`hpsearch slurm` without a SLURM cluster: the batch script it writes, and the checks that
refuse a job before anything is written or submitted (one line, exit status 2).

The real thing, a one-node SLURM running these scripts, is tests/hpsearch/test_slurm_cluster.py
(`make test-slurm`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hpsearch.cli import build_parser, main, settings_from_args
from hpsearch.settings import SweepSettings
from hpsearch.slurm import parse_time
from hpsearch.slurm_budget import STOP_MARGIN_S
from hpsearch.slurm_template import sweep_options

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "search_spaces" / "smoke.yaml"
DEFAULT = REPO / "search_spaces" / "default.yaml"


def _sbatch_lines(text: str) -> list[str]:
    return [
        line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")
    ]


def _driver_argv(text: str) -> list[str]:
    """The driver's command in the script (step 6), as the shell splits it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("hpsearch "))
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith("&"))
    return shlex.split(" ".join(line.rstrip(" \\&") for line in lines[start : end + 1]))


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------------------- the script
def test_sweep_script_carries_every_option_and_the_job(tmp_path, child_environ):
    """A GPU sweep on two nodes: the #SBATCH lines, Ray's steps, token authentication on, and
    a driver command that parses back to exactly the sweep's settings; nothing is written but
    the script (the experiment folder comes with the job)."""
    from trainables.minbert.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data")
    storage = tmp_path / "store"
    sweep_args = [
        str(SMOKE),
        "train.lr=0.001",
        "--storage-path",
        str(storage),
        "--name",
        "gpu-sweep",
        "--num-samples",
        "3",
        "--max-concurrent",
        "2",
        "--cpus-per-trial",
        "2",
        "--gpus-per-trial",
        "1",
        "--data-dir",
        str(data),
        "--max-failures",
        "1",
        "--time-limit-per-trial",
        "600",
        "--no-report",
    ]
    job_args = [
        *("--nodes", "2", "--cpus-per-node", "8", "--gpus-per-node", "2"),
        *("--time", "1-00:00:00", "--partition", "gpu", "--account", "proj-42", "--exclusive"),
    ]
    proc = _run(["slurm", *sweep_args, *job_args], tmp_path, child_environ)
    assert proc.returncode == 0, proc.stderr
    script = storage / "gpu-sweep.slurm.sh"
    assert sorted(storage.iterdir()) == [script]  # no experiment folder before the job runs
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert _sbatch_lines(text) == [
        "--job-name=hpsearch-gpu-sweep",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=8",
        "--gpus-per-node=2",
        "--partition=gpu",
        "--account=proj-42",
        "--exclusive",
        "--time=1-00:00:00",
        f"--output={storage}/gpu-sweep.slurm-%j.out",
        f"--signal=B:USR1@{STOP_MARGIN_S}",
    ]
    # every step is there, with its comment: token, nodes, head, workers, wait, driver, end
    for step in range(1, 8):
        assert re.search(rf"^# {step}\. \S", text, re.MULTILINE), step
    assert "ray start --head --block" in text and "ray start --block --address" in text
    assert "export RAY_AUTH_MODE=token" in text and "disabled" not in text
    assert f"EXP_DIR={storage}/gpu-sweep" in text
    assert f"export PATH={Path(sys.executable).parent}:" in text
    # The driver's command parses back to the very settings of `hpsearch sweep` with the same
    # options, joined to the job's Ray.
    argv = _driver_argv(text)
    assert argv[:3] == ["hpsearch", "sweep", str(SMOKE)] and argv[-2:] == [
        "--address",
        "$RAY_HEAD",
    ]
    expected = settings_from_args(build_parser().parse_args(["sweep", *sweep_args]))
    got = settings_from_args(build_parser().parse_args(argv[1:]))
    assert got == dataclasses.replace(expected, address="$RAY_HEAD")
    # what to run next, with the job's own options
    resume = f"hpsearch slurm --resume {storage}/gpu-sweep {' '.join(job_args)} --submit"
    assert resume in text and resume in proc.stdout
    assert f"experiment folder: {storage}/gpu-sweep" in proc.stdout
    assert re.search(r"time needed: at least \d+ min", proc.stdout)

    # The same command again rewrites the same script; a script edited by hand is kept.
    assert _run(["slurm", *sweep_args, *job_args], tmp_path, child_environ).returncode == 0
    script.write_text(text.replace("--nodes=2", "--nodes=3"))
    again = _run(["slurm", *sweep_args, *job_args], tmp_path, child_environ)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "exists with other content" in again.stderr
    assert "--nodes=3" in script.read_text()


def test_every_sweep_setting_reaches_the_driver(tmp_path):
    """Each SweepSettings field a job passes on comes back from the script's driver command
    unchanged: a new field without an option here fails this test."""
    exp_dir = tmp_path / "store" / "exp"
    values = {
        "num_samples": 3,
        "max_concurrent": 2,
        "cpus_per_trial": 1.5,
        "gpus_per_trial": 0.5,
        "workers_per_trial": 2,
        "data_dir": str(tmp_path / "data"),
        "max_failures": 5,
        "time_limit_per_trial": 30.0,
        "warm_start": str(tmp_path / "earlier"),
        "smoke_test": True,
        "report": False,
    }
    fixed_by_the_job = {"name", "storage_path", "address", "num_cpus", "exist_ok_suffix"}
    separate = {"overrides"}  # passed as they were typed, before the options
    names = {f.name for f in dataclasses.fields(SweepSettings)}
    assert names == set(values) | fixed_by_the_job | separate, "give the new field a value here"
    settings = SweepSettings(**values)
    argv = ["sweep", "space.yaml", *sum(sweep_options(settings, exp_dir), [])]
    got = settings_from_args(build_parser().parse_args(argv))
    assert got == dataclasses.replace(settings, name="exp", storage_path=str(exp_dir.parent))


def test_a_short_time_limit_is_accepted_for_a_multi_job_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["slurm", str(DEFAULT), "--storage-path", str(tmp_path), "--time", "00:10:00"]
    assert main([*args, "--multi-job"]) == 0
    assert "time needed: at least" in capsys.readouterr().out
    assert (tmp_path / "default.slurm.sh").is_file()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("04:00:00", 14400),
        ("1-00", 86400),
        ("2-03:04", 183840),
        ("1-00:00:30", 86430),
        ("UNLIMITED", None),
    ],
)
def test_slurm_time_limits_are_read_as_sbatch_reads_them(text, seconds):
    assert parse_time(text) == seconds


# ---------------------------------------------------------------------------- refusals
@dataclass
class Case:
    id: str
    args: Callable[[Path], list[str]]  # given the case folder, the arguments after `hpsearch`
    expect: str  # a regular expression the one error line must match
    setup: Callable[[Path], None] = lambda root: None
    env: Callable[[Path], dict[str, str]] = lambda root: {}
    needs_sbatch: bool = False


def _slurm(*extra: str, space: Path | str = SMOKE) -> Callable[[Path], list[str]]:
    def args(root: Path) -> list[str]:
        store = ["--storage-path", str(root / "store")]
        return ["slurm", str(space), *store, "--cpus-per-node", "2", "--time", "00:30:00", *extra]

    return args


def _bad_space(root: Path) -> None:
    doc = yaml.safe_load(SMOKE.read_text())
    doc["parameters"]["train.lr"]["type"] = "gaussian"
    (root / "bad.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _experiment_without_ray_state(root: Path) -> None:
    exp = root / "store" / "half"
    exp.mkdir(parents=True)
    record = {
        "name": "half",
        "study_name": "half",
        "total_trials": 2,
        "trial_overrides": {},
        "settings": SweepSettings(storage_path=str(root / "store")).to_dict(),
    }
    (exp / "experiment.json").write_text(json.dumps(record))


CASES = [
    Case("unknown-option", _slurm("--nodez", "2"), r"unrecognized arguments: --nodez"),
    Case("no-space", lambda root: ["slurm", "--time", "01:00:00"], r"give a search space"),
    Case(
        "space-does-not-validate",
        lambda root: _slurm(space=root / "bad.yaml")(root),
        r"bad\.yaml: parameters\.train\.lr\.type: unknown type 'gaussian'",
        setup=_bad_space,
    ),
    Case("space-missing", _slurm(space="nowhere.yaml"), r"nowhere\.yaml"),
    Case("bad-override", _slurm("train.lr=fast"), r"train\.lr"),
    Case(
        "more-gpus-per-trial-than-per-node",
        _slurm("--gpus-per-trial", "2", "--gpus-per-node", "1"),
        r"--gpus-per-trial 2 but --gpus-per-node 1: .*raise --gpus-per-node",
    ),
    Case(
        "gpu-trials-on-cpu-nodes",
        _slurm("--gpus-per-trial", "1"),
        r"--gpus-per-trial 1 but --gpus-per-node 0",
    ),
    Case(
        "more-cpus-per-trial-than-per-node",
        _slurm("--cpus-per-trial", "4"),
        r"--cpus-per-trial 4 but --cpus-per-node 2",
    ),
    Case(
        "workers-do-not-fit-the-job",
        _slurm("--workers-per-trial", "3"),
        r"--workers-per-trial 3 but the job's 1 node\(s\) hold 2",
    ),
    Case(
        "time-shorter-than-the-budget",
        _slurm("--time", "00:10:00", space=DEFAULT),
        r"--time 00:10:00 \(10 min 00 s\) is shorter than this sweep needs: at least "
        r"\d+ min \d+ s \(20 trial\(s\), 2 at once, .* pass --multi-job",
    ),
    Case("time-leaves-nothing", _slurm("--time", "00:02:00"), r"leaves no time for trials"),
    Case(
        "time-leaves-nothing-multi-job",
        _slurm("--time", "3", "--multi-job"),
        r"--time 3 leaves no time for trials",
    ),
    Case("time-format", _slurm("--time", "2h"), r"--time '2h' is not a SLURM time limit"),
    Case("address", _slurm("--address", "auto"), r"--address does not apply to a SLURM job"),
    Case("num-cpus", _slurm("--num-cpus", "2"), r"--num-cpus does not apply"),
    Case("exist-ok-suffix", _slurm("--exist-ok-suffix"), r"--exist-ok-suffix does not apply"),
    Case(
        "experiment-exists",
        _slurm(),
        r"experiment folder .*store/smoke already exists",
        setup=lambda root: (root / "store" / "smoke").mkdir(parents=True),
    ),
    Case("job-name", _slurm("--job-name", "my sweep"), r"--job-name 'my sweep'"),
    Case(
        "sbatch-missing",
        _slurm("--submit"),
        r"--submit needs SLURM's sbatch, which is not on PATH",
        env=lambda root: {"PATH": str(root / "no-bin")},
    ),
    Case(
        "no-ray-token",
        _slurm("--submit"),
        r"Ray token .*missing.*ray get-auth-token --generate",
        env=lambda root: {"RAY_AUTH_TOKEN_PATH": str(root / "no-token")},
        needs_sbatch=True,
    ),
    Case(
        "resume-not-an-experiment",
        lambda root: ["slurm", "--resume", str(root)],
        r"is not an hpsearch experiment folder",
    ),
    Case(
        "resume-without-ray-state",
        lambda root: ["slurm", "--resume", str(root / "store" / "half")],
        r"Ray's experiment state is missing",
        setup=_experiment_without_ray_state,
    ),
    Case(
        "resume-with-a-space",
        lambda root: ["slurm", str(SMOKE), "--resume", str(root)],
        r"--resume continues an experiment with the space it recorded",
    ),
    Case(
        "resume-with-sweep-options",
        lambda root: ["slurm", "--resume", str(root), "--num-samples", "3"],
        r"drop --num-samples \(only --no-report applies\)",
    ),
]


def _listing(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_job_is_refused_in_one_line_before_anything_is_written(
    case: Case, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The real command in this process (`hpsearch.cli.main`): exit status 2, one `error:`
    line naming the problem, nothing written, nothing submitted (sbatch is never reached)."""
    if case.needs_sbatch and shutil.which("sbatch") is None:
        pytest.skip("sbatch is not installed (make test-slurm installs SLURM)")
    case.setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    for key, value in case.env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    before = _listing(tmp_path)
    try:
        status = main(case.args(tmp_path))
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    out, err = capsys.readouterr()
    assert status == 2, f"exit {status}\nstdout: {out}\nstderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(case.expect, lines[0]), lines[0]
    assert "submitted" not in out
    assert _listing(tmp_path) == before, "the command wrote files"


# ---------------------------------------------------------------------------- resume job
@pytest.mark.slow
def test_resume_script_of_a_real_experiment(tmp_path, cli, records):
    """After a real (local) sweep: `--resume` writes a job running `hpsearch resume` on the
    job's Ray, its estimate from the experiment's own trial times."""
    doc = yaml.safe_load(SMOKE.read_text())
    doc["name"] = "local"
    doc["search"].update(num_samples=2, scheduler="none")
    doc["search"].pop("asha")
    space = tmp_path / "local.yaml"
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    storage = tmp_path / "store"
    cli("sweep", str(space), "--storage-path", str(storage), "--num-cpus", "2", "--no-report")
    exp = storage / "local"
    assert len(records(exp)) == 2
    out = cli("slurm", "--resume", str(exp), "--cpus-per-node", "2", "--time", "20", "--no-report")
    script = storage / "local.resume.slurm.sh"
    text = script.read_text()
    assert _driver_argv(text) == [
        "hpsearch",
        "resume",
        str(exp),
        "--no-report",
        "--address",
        "$RAY_HEAD",
    ]
    assert "--time=00:20:00" in _sbatch_lines(text)
    assert "0 trial(s), 2 at once, 0 wave(s)" in out.stdout  # nothing left to run
    assert "the mean of its 2 ended trial(s)" in out.stdout
